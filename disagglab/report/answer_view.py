"""The answer section in words and tables: per workload, what to deploy and what it costs.

report/answer.py decides; this module says it. Each workload gets one sentence per SLO (the
recommendation, its runner-up and whether the lead is real, or that nothing meets the SLO and
which configuration comes closest), one table of every configuration in recommendation order,
and its two trade-off plots (report/answer_plots.py). Both documents render these views.
"""

from __future__ import annotations

from dataclasses import dataclass

from disagglab.report.answer import GOODPUT, SLO_ATTAINMENT_TARGET_PCT, Candidate, Recommendation, configuration_name
from disagglab.report.answer_plots import WorkloadFigures, slug
from disagglab.report.cells import Table, fmt, with_ci, with_interval
from disagglab.report.cost import COST_KEY, PRICE_TABLE, Pricing
from disagglab.report.pareto import INTERACTIVITY, TradeOff
from disagglab.report.plots import Plot
from disagglab.report.rows import Row, number

SIGNIFICANCE = {
    True: "the lead is significant (disjoint 95% CIs)",
    False: "the lead is not significant (the 95% CIs overlap)",
    None: "significance not judged (single trials: set repeats >= 2)",
}


@dataclass(frozen=True)
class WorkloadAnswer:
    """One workload's part of the answer section."""

    workload: str
    anchor: str
    sentences: tuple[str, ...]
    table: Table
    plots: tuple[Plot, ...]


def _cost(c: Candidate, price: Pricing) -> str:
    if price.usd_per_gpu_hour is None:
        return "unknown"
    value = c.row.get(COST_KEY)
    return "-" if value is None else f"${fmt(value)}"


def _who(c: Candidate) -> str:
    gpus = c.row.get("gpus_used")
    sim = ", simulated" if c.row.get("simulated") else ""
    return f"{configuration_name(c.row)} ({c.row['pattern_id']}, {gpus} GPU{'s' if gpus != 1 else ''}{sim})"


def _value(rec: Recommendation, c: Candidate) -> str:
    if rec.basis == GOODPUT:
        return f"{with_ci(c.value, c.interval)} good req/s per GPU at {fmt(c.attainment)}% SLO attainment"
    return f"{with_ci(c.value, c.interval)} output tok/s per GPU"


def _cost_clause(c: Candidate, price: Pricing) -> str:
    cost = _cost(c, price)
    return f", {price.unknown_reason()} per million output tokens" if cost == "unknown" else (
        f", {cost} per million output tokens" if cost != "-" else "")


def sentence(rec: Recommendation, price: Pricing) -> str:
    """The recommendation as one or two sentences a reader can act on."""
    slo = (f"SLO {rec.slo} (met when at least {SLO_ATTAINMENT_TARGET_PCT:g}% of requests are within it)" if rec.slo
           else "no SLO in the plan, so configurations are ranked by output tok/s per GPU")
    head = f"{rec.workload}, {slo}: "
    if rec.best is None:
        closest = rec.closest
        near = f" Closest: {_who(closest)} with {fmt(closest.attainment)}% attainment." if closest else ""
        return head + "no configuration meets the SLO." + near
    text = head + f"deploy {_who(rec.best)}: {_value(rec, rec.best)}{_cost_clause(rec.best, price)}."
    second = rec.runner_up
    if second is None:
        only = "meets the SLO" if rec.slo else "was measured"
        return text + f" It is the only configuration that {only}."
    lead = "" if rec.lead is None else f"; the recommendation leads by {rec.lead:.2f}x"
    return text + f" Runner-up: {_who(second)}: {_value(rec, second)}{lead}, {SIGNIFICANCE[rec.significant]}."


def _frontiers(c: Candidate, trade_offs: tuple[TradeOff, ...]) -> str:
    names = [("speed" if t.x is INTERACTIVITY else "TTFT") for t in trade_offs if t.on_frontier(c.row)]
    return ", ".join(names) or "-"


COLUMNS = ("rank", "configuration", "GPUs", "SLO", "SLO attainment", "meets SLO", "goodput/GPU (req/s)", "out tok/s/GPU",
           "$ per M out tokens", "tok/s per user", "TTFT p99", "on frontier", "pattern", "prefix hits measured / expected")
NUMERIC = (True, False, True, False, True, False, True, True, True, True, True, False, False, False)


def _prefix_hits(r: Row) -> str:
    """The workload's prefix-cache hit rate as the servers counted it against an ideal cache's ('-' without a workload)."""
    expected, measured = number(r.get("prefix_hit_rate_expected")), number(r.get("prefix_hit_rate_measured"))
    if expected is None:
        return "-"
    shown = f"{'-' if measured is None else f'{measured:.2f}'} / {expected:.2f}"
    return shown + " (gap flagged)" if r.get("prefix_hit_gap_flagged") else shown


def _cells(rec: Recommendation, c: Candidate, price: Pricing, trade_offs: tuple[TradeOff, ...]) -> tuple[str, ...]:
    r = c.row
    rank = rec.rank(r)
    ranked = "-" if rank is None else "1 (recommended)" if rank == 1 else str(rank)
    meets = {None: "-", True: "yes", False: "no"}[c.meets]
    speed = INTERACTIVITY.value(r)
    return (ranked, configuration_name(r), str(r.get("gpus_used")), rec.slo or "none", "-" if c.attainment is None else f"{fmt(c.attainment)}%",
            meets, with_ci(c.value, c.interval) if rec.basis == GOODPUT and number(r.get("request_goodput")) is not None else "-",
            with_interval(r, "output_throughput_per_gpu", ""), _cost(c, price), with_ci(speed, INTERACTIVITY.interval(r)),
            with_interval(r, "p99_ttft_ms", "ms"), _frontiers(c, trade_offs), str(r["pattern_id"]), _prefix_hits(r))


def workload_answers(recs: list[Recommendation], figures: list[WorkloadFigures], price: Pricing) -> list[WorkloadAnswer]:
    """Per workload (the figures' order, which is plan order): sentences, the table and the plots."""
    out = []
    for fig in figures:
        mine = [rec for rec in recs if rec.workload == fig.workload]
        rows = tuple(_cells(rec, c, price, fig.trade_offs) for rec in mine for c in rec.ranked)
        out.append(WorkloadAnswer(fig.workload, "answer-" + slug(fig.workload).replace("_", "-"),
                                  tuple(sentence(rec, price) for rec in mine), Table(COLUMNS, rows, NUMERIC), fig.plots))
    return out


def method(price: Pricing) -> list[str]:
    """How to read the answer section: the rules behind every sentence and column."""
    if price.usd_per_gpu_hour is None:
        dollars = (f"The price of {price.instance_type} is {price.unknown_reason()}, so every cost shows as unknown "
                   "(a missing price is never counted as free).")
    else:
        dollars = (f"Cost per million output tokens = $/h per GPU x GPUs used / (output tok/s x 3600) x 10^6, with "
                   f"{price.instance_type} at ${price.usd_per_hour:g}/h for {price.gpus_per_instance} GPUs "
                   f"(${price.usd_per_gpu_hour:.3f} per GPU-hour, from {PRICE_TABLE} in the configuration).")
    return [
        "A workload is the prompt and output lengths plus the plan's workload kind (or trace); configurations are compared "
        "only within one workload. Each valid, current pattern of it is a candidate: backend, topology and load point.",
        f"With an SLO, a configuration meets it when at least {SLO_ATTAINMENT_TARGET_PCT:g}% of its requests meet every target "
        "(DistServe's attainment goal); the recommendation is the one with the most goodput per GPU (requests per second "
        "that met the SLO, divided by every GPU the pattern held) among those. Without an SLO, the most output tok/s per GPU.",
        "The lead over the runner-up is called significant only when both ran repeats and their 95% intervals are disjoint.",
        "The Pareto frontier holds the configurations no other one beats on both axes (tok/s per GPU against tok/s per user, "
        "or against TTFT p99); a configuration off the frontier is never the better trade.",
        dollars,
    ]
