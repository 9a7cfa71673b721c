"""The stand-in's per-node budget: a server computes with all its GPUs, and the servers of one
node share its network link (two decode servers pulling KV at once queue on one NIC)."""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from sim.errors import ConfigError  # noqa: E402
from sim.node_link import NodeLink  # noqa: E402
from sim.profile import Profile, parse_profile  # noqa: E402


def test_a_tp2_server_is_faster_than_tp1_by_the_stated_efficiency_and_tp1_is_unchanged() -> None:
    p = Profile(prefill_overhead_ms=0.0, time_scale=1.0)
    assert p.prefill_s(8000, 1) == pytest.approx(1.0) and p.prefill_s(8000) == p.prefill_s(8000, 1)
    assert p.prefill_s(8000, 2) == pytest.approx(1.0 / 1.8)  # 2 GPUs x 0.9
    assert p.prefill_s(8000, 4) == pytest.approx(1.0 / (4 * 0.81))
    assert p.decode_step_s(1, 2) == pytest.approx(0.025 / 1.8)
    with pytest.raises(ConfigError, match="tp_efficiency must be <= 1"):
        parse_profile('{"tp_efficiency": 1.5}')


def _book(path: str, n: int, out: multiprocessing.Queue) -> None:
    link = NodeLink(Path(path))
    spans = []
    for _ in range(n):
        now = time.monotonic()
        done = link.reserve(now, 0.001)
        spans.append((done - 0.001, done))
    out.put(spans)


def test_reservations_of_servers_in_separate_processes_never_overlap_on_one_link(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_book, args=(str(tmp_path / "link"), 300, out)) for _ in range(3)]
    for p in procs:
        p.start()
    spans = sorted(s for _ in procs for s in out.get(timeout=60))
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(spans) == 900
    overlaps = [(a, b) for a, b in zip(spans, spans[1:]) if b[0] < a[1] - 1e-9]
    assert overlaps == []


def test_separate_links_do_not_queue_and_a_value_from_another_boot_is_ignored(tmp_path: Path) -> None:
    a, b = NodeLink(tmp_path / "node1"), NodeLink(tmp_path / "node2")
    assert a.reserve(100.0, 5.0) == 105.0 and b.reserve(100.0, 5.0) == 105.0  # two nodes, two NICs
    assert a.reserve(100.0, 5.0) == 110.0  # the second transfer on node1 waits for the first
    (tmp_path / "node1").write_text("another-boot 99999.0")
    assert a.reserve(100.0, 5.0) == 105.0
    own = NodeLink(None)  # a stand-in started by hand: its own link, as before
    assert own.reserve(1.0, 1.0) == 2.0 and own.reserve(1.0, 1.0) == 3.0
