"""Build the small local tokenizer the peer clients need (run with a peer venv's Python).

aiperf and guidellm both need a Hugging Face tokenizer to build synthetic prompts
of N tokens, and neither may download one here.  This script trains a tiny
ByteLevel BPE (vocab 8000, ``<|endoftext|>``) with the ``tokenizers`` library on
a local text (aiperf's bundled ``shakespeare.txt`` when given, else the
standard library's own sources, sorted), saves it with
``PreTrainedTokenizerFast.save_pretrained`` to ``OUT/tok-bpe`` and writes an
HF-hub-cache-shaped copy ``OUT/hf-cache/models--local--tok-bpe`` so that aiperf
can load it as ``local/tok-bpe`` under ``HF_HUB_OFFLINE=1``.  The training is
deterministic: rebuilding from the same text gives the same tokenizer.json.

Usage: ``PEER_PYTHON fidelity_tokenizer.py OUT [CORPUS.txt]``; prints the
tokenizer directory.  Imports only the peer venv's packages, never the project.
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

SNAPSHOT = "0" * 40


def corpus_text(path: str | None) -> str:
    """The training text: the given file, else the stdlib sources (deterministic per Python)."""
    if path:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py"))[:200]
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


def build(out: Path, corpus: str | None) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8000,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_text(corpus).splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=1_000_000,
    )
    tok_dir = out / "tok-bpe"
    tmp = out / "tok-bpe.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(str(tmp))
    shutil.rmtree(tok_dir, ignore_errors=True)
    tmp.rename(tok_dir)
    repo = out / "hf-cache" / "models--local--tok-bpe"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    snap = repo / "snapshots" / SNAPSHOT
    snap.mkdir(parents=True)
    for item in sorted(tok_dir.iterdir()):
        shutil.copy2(item, snap / item.name)
    return tok_dir


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: fidelity_tokenizer.py OUT [CORPUS.txt]")
    print(build(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) == 3 else None))
