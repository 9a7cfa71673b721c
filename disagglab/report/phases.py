"""Phase-to-phase comparison: the same workload measured twice, and what got worse.

Patterns are matched by what they measure (backend, prompt tokens, concurrency, load mode,
prefix caching, output length), not by id,
because ids carry the phase number. A latency that rose, or a throughput that fell, by more
than the threshold is a regression; the CLI exits non-zero on one so it can gate CI.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disagglab.paths import PhaseLayout
from disagglab.results.read import CorruptResult, read_result, result_problem

# metric -> +1 when higher is worse (latency), -1 when lower is worse (throughput)
METRICS: dict[str, int] = {
    "median_ttft_ms": 1, "p99_ttft_ms": 1, "median_tpot_ms": 1, "median_itl_ms": 1, "median_e2el_ms": 1,
    "output_throughput": -1, "request_throughput": -1,
}


@dataclass
class Row:
    key: tuple[Any, ...]
    a_id: str
    b_id: str
    deltas: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    """metric -> (value in A, value in B, change in percent)"""
    regressions: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    phase_a: str
    phase_b: str
    threshold_pct: float
    rows: list[Row]
    only_a: list[str]
    only_b: list[str]
    skipped: list[str]

    @property
    def regressions(self) -> list[tuple[str, str]]:
        return [(f"{r.b_id} vs {r.a_id}", m) for r in self.rows for m in r.regressions]


def match_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """What a result measured: backend, prompt, load, and every setting that changes the workload."""
    spec = r["spec"]
    return (r["description"]["backend"], int(spec["prompt_tokens"]), int(spec["concurrency"]), spec.get("measurement_type", "online"),
            spec.get("request_rate"), bool(spec.get("prefix_cache", False)), int(spec["max_tokens"]))


def _load(results: Path) -> tuple[dict[tuple[Any, ...], tuple[str, dict[str, Any]]], list[str]]:
    found, skipped = {}, []
    layout = PhaseLayout(results)
    for path in sorted(layout.runs_dir.glob("*.json")):
        try:
            r = read_result(path, path.stem)
            key = match_key(r)
        except CorruptResult as exc:
            skipped.append(f"{path}: corrupt ({exc.reason})")
            continue
        except (ValueError, KeyError, TypeError) as exc:
            skipped.append(f"{path}: unreadable ({type(exc).__name__}: {exc})")
            continue
        if not r.get("validity", {}).get("valid", False):
            skipped.append(f"{path}: invalid result ({'; '.join(r['validity'].get('reasons', []))})")
            continue
        if key in found:
            skipped.append(f"{path}: measures the same workload as {found[key][0]}; neither is compared")
            found[key] = ("", {})
            continue
        found[key] = (r["pattern_id"], r)
    for moved in sorted(layout.corrupt_dir.glob("*.json")):
        if not layout.result(moved.stem).exists():
            skipped.append(f"{layout.result(moved.stem)}: corrupt ({result_problem(moved, moved.stem)}; moved to {moved})")
    found = {k: v for k, v in found.items() if v[0]}
    return found, skipped


def compare(results_a: Path, results_b: Path, threshold_pct: float) -> Comparison:
    a, skipped_a = _load(results_a)
    b, skipped_b = _load(results_b)
    rows = []
    for key in sorted(set(a) & set(b)):
        (a_id, ra), (b_id, rb) = a[key], b[key]
        row = Row(key, a_id, b_id)
        for metric, worse in METRICS.items():
            va, vb = ra.get(metric), rb.get(metric)
            if not isinstance(va, int | float) or not isinstance(vb, int | float) or va == 0:
                continue
            pct = (vb - va) / abs(va) * 100.0
            row.deltas[metric] = (float(va), float(vb), pct)
            if pct * worse > threshold_pct:
                row.regressions.append(metric)
        rows.append(row)
    return Comparison(results_a.name, results_b.name, threshold_pct, rows,
                      sorted(a[k][0] for k in set(a) - set(b)), sorted(b[k][0] for k in set(b) - set(a)), skipped_a + skipped_b)


def text_lines(c: Comparison) -> list[str]:
    lines = [f"{c.phase_b} vs {c.phase_a}: {len(c.rows)} matched patterns, threshold {c.threshold_pct:g}%"]
    for r in c.rows:
        backend, tokens, conc = r.key[:3]
        flag = "REGRESSION " + ",".join(r.regressions) if r.regressions else "ok"
        parts = [f"{m} {d[2]:+.1f}%" for m, d in r.deltas.items() if m in ("median_ttft_ms", "median_tpot_ms", "output_throughput")]
        lines.append(f"  {backend:8s} {tokens:>6d} tok c={conc:<3d} {r.b_id} vs {r.a_id}: {', '.join(parts)}  {flag}")
    for label, ids in (("only in " + c.phase_a, c.only_a), ("only in " + c.phase_b, c.only_b), ("skipped", c.skipped)):
        if ids:
            lines.append(f"  {label}: {', '.join(ids)}")
    lines.append(f"{len(c.regressions)} regression(s)")
    return lines


def write_html(c: Comparison, out: Path) -> None:
    e = html.escape
    head = "".join(f"<th>{e(m)} ({e(c.phase_a)} &rarr; {e(c.phase_b)})</th>" for m in METRICS)
    body = []
    for r in c.rows:
        cells = []
        for m in METRICS:
            if m in r.deltas:
                va, vb, pct = r.deltas[m]
                cls = ' class="regression"' if m in r.regressions else ""
                cells.append(f"<td{cls}>{va:.2f} &rarr; {vb:.2f} ({pct:+.1f}%)</td>")
            else:
                cells.append("<td>-</td>")
        backend, tokens, conc = r.key[:3]
        body.append(f"<tr><td>{e(backend)}</td><td>{tokens}</td><td>{conc}</td><td>{e(r.a_id)}</td><td>{e(r.b_id)}</td>{''.join(cells)}</tr>")
    extra = "".join(f"<p>{e(label)}: {e(', '.join(ids))}</p>" for label, ids in
                    ((f"Only in {c.phase_a}", c.only_a), (f"Only in {c.phase_b}", c.only_b), ("Skipped", c.skipped)) if ids)
    verdict = (f'<p class="regression">{len(c.regressions)} regression(s) beyond {c.threshold_pct:g}%: '
               + e("; ".join(f"{p} {m}" for p, m in c.regressions)) + "</p>") if c.regressions else f"<p>No regression beyond {c.threshold_pct:g}%.</p>"
    doc = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>{e(c.phase_b)} vs {e(c.phase_a)}</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 6px}} .regression{{background:#fdd;color:#900}}</style>
</head><body><h1>{e(c.phase_b)} vs {e(c.phase_a)}</h1>{verdict}
<table><tr><th>backend</th><th>prompt tokens</th><th>concurrency</th><th>{e(c.phase_a)}</th><th>{e(c.phase_b)}</th>{head}</tr>{''.join(body)}</table>{extra}</body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(doc)
    tmp.replace(out)
