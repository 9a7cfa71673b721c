#!/usr/bin/env python3
"""Write the sample request traces shipped in plans/traces/ (one per format the plan reads).

Made here, not downloaded: small enough to replay on a laptop with the stand-in, shaped like
the public traces (docs/workloads.md says where those are). The Mooncake sample is a few
conversations over three shared system prompts: a turn extends its conversation's hash ids,
so later turns reuse earlier turns' blocks. The Azure sample is lengths and arrival times
only (that trace has no prefix information). Same bytes on every run (Python's own RNG, seeded);
tests/test_workload_trace.py checks that the shipped files are this script's output.

    python tools/make_sample_traces.py [OUT_DIR]   # default: plans/traces
"""

from __future__ import annotations

import json
import random
import sys
from datetime import datetime, timedelta
from pathlib import Path

BLOCK = 512  # tokens per Mooncake hash id
REQUESTS = 40
MEAN_GAP_MS = 250.0


def mooncake_lines(rng: random.Random) -> list[str]:
    """Conversations over 3 system prompts of 2 blocks each (hash ids 0..5)."""
    next_id = 6
    conversations: list[list[int]] = []
    lines, now = [], 0.0
    for _ in range(REQUESTS):
        now += rng.expovariate(1.0 / MEAN_GAP_MS)
        if conversations and rng.random() < 0.4:  # another turn of an open conversation
            ids = rng.choice(conversations)
        else:
            system = rng.randrange(3)
            ids = [2 * system, 2 * system + 1]
            conversations.append(ids)
        ids.append(next_id)  # the new turn's block
        next_id += 1
        input_length = len(ids) * BLOCK - rng.randrange(1, BLOCK // 2)
        if input_length > 3000:  # a conversation too long for the sample's servers starts again
            conversations.remove(ids)
            ids[:] = ids[:2] + ids[-1:]
            input_length = len(ids) * BLOCK - rng.randrange(1, BLOCK // 2)
        row = {"timestamp": int(now), "input_length": input_length, "output_length": rng.randrange(8, 33), "hash_ids": list(ids)}
        lines.append(json.dumps(row))
    return lines


def azure_lines(rng: random.Random) -> list[str]:
    start = datetime(2023, 11, 16, 18, 15, 46, 680590)
    lines, now = ["TIMESTAMP,ContextTokens,GeneratedTokens"], 0.0
    for _ in range(REQUESTS):
        now += rng.expovariate(1.0 / MEAN_GAP_MS)
        stamp = start + timedelta(milliseconds=now)
        context = min(2000, max(16, int(rng.lognormvariate(6.6, 0.6))))
        lines.append(f"{stamp:%Y-%m-%d %H:%M:%S.%f}0,{context},{rng.randrange(4, 41)}")
    return lines


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "plans" / "traces"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sample.mooncake.jsonl").write_text("\n".join(mooncake_lines(random.Random(17))) + "\n")
    (out / "sample.azure.csv").write_text("\n".join(azure_lines(random.Random(23))) + "\n")
    print(f"wrote {out / 'sample.mooncake.jsonl'} and {out / 'sample.azure.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
