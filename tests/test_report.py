"""summary.csv and the phase report, from real results of a real pipeline run.

A copy of the session's finished phase14 L0 (a real Snakemake run) runs one extra pattern
that the stand-in makes fail; every expected number below is read back from the result files that
run wrote, never typed in.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from disagglab.plan.config import load_config_file
from disagglab.plan.model import Plan, load_plan
from disagglab.report.cells import fmt
from disagglab.report.document import PLOT_NAMES, SIM_BANNER, write_report, write_summary
from disagglab.report.rows import ANSWER_COLUMNS, PREFIX_CACHE_COLUMNS

from conftest import Project, alive_groups, finished_copy, ledger_entries

PHASE = "phase14"
FAILING = "p14-tcp-4k-c2"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Built:
    proj: Project
    plan: Plan
    results: Path
    csv_rows: list[dict[str, str]]
    html: str
    md: str
    md_path: Path
    plots: list[Path]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, finished_l0: Project) -> Iterator[Built]:
    proj = finished_copy(finished_l0, tmp_path_factory.mktemp("report") / "proj")
    out = proj.snakemake(f"results/{PHASE}/runs/{FAILING}.json", env={"DISAGGLAB_FAULTS": json.dumps({FAILING: {"consumer": "crash_after=5"}})})
    assert out.returncode != 0, "the injected fault must fail the pattern"
    assert (proj.root / f"results/{PHASE}/failures/{FAILING}.json").exists()
    plan = load_plan(proj.root / "plans" / f"{PHASE}.json")
    results = proj.root / "results" / PHASE
    write_summary(plan, results, results / "summary.csv")
    plots = write_report(plan, results, results / "report.html", results / "report.md", results / "report_plots")
    with (results / "summary.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    yield Built(proj, plan, results, rows, (results / "report.html").read_text(), (results / "report.md").read_text(),
                results / "report.md", plots)
    assert alive_groups(ledger_entries(proj.root)) == []


def plan_ids(plan: Plan) -> list[str]:
    return [pid for layer in plan.layers for pid in layer.pattern_ids]


def result(b: Built, pid: str) -> dict:
    return json.loads((b.results / "runs" / f"{pid}.json").read_text())


def done_ids(b: Built) -> list[str]:
    return sorted(p.stem for p in (b.results / "runs").glob("*.json"))


# -- summary.csv ------------------------------------------------------------------------------

def test_summary_has_one_row_per_pattern_in_plan_order(built: Built) -> None:
    assert [r["pattern_id"] for r in built.csv_rows] == plan_ids(built.plan)
    assert len(built.csv_rows) == len(built.plan.patterns) == 30
    states = [r["status"] for r in built.csv_rows]
    assert states.count("done") == 6 and states.count("failed") == 1 and states.count("missing") == 23
    assert sorted(r["pattern_id"] for r in built.csv_rows if r["status"] == "done") == done_ids(built)


def test_summary_carries_the_effective_parameters(built: Built) -> None:
    for row in built.csv_rows:
        spec = built.plan.pattern(row["pattern_id"]).spec
        assert row["layer"] == built.plan.pattern(row["pattern_id"]).layer
        assert row["backend"] == spec["backend"]
        assert int(row["prompt_tokens"]) == spec["prompt_tokens"] and int(row["concurrency"]) == spec["concurrency"]
        assert int(row["max_tokens"]) == spec["max_tokens"] and int(row["max_model_len"]) == spec["max_model_len"]
        assert row["measurement_type"] == spec["measurement_type"]
        assert int(row["tp_size"]) == spec["infrastructure"]["tp_size"] and row["model"] == spec["infrastructure"]["model"]


def test_summary_has_every_scalar_metric_of_each_result(built: Built) -> None:
    by_id = {r["pattern_id"]: r for r in built.csv_rows}
    for pid in done_ids(built):
        res, row = result(built, pid), by_id[pid]
        for key in ("completed", "failed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
                    "request_goodput", "slo_attainment_pct"):
            assert key in row
        for metric in ("ttft", "tpot", "itl", "e2el"):
            for stat in ("mean", "median", "std", "p50", "p90", "p99"):
                key = f"{stat}_{metric}_ms"
                assert float(row[key]) == pytest.approx(res[key]), (pid, key)
        assert row["engine"] == res["engine"] == "sim" and row["simulated"] == "true"
        assert row["validity"] == "valid" and row["validity_reason"] == res["kv_transfer"]["reason"]


def test_per_gpu_throughput_divides_by_every_gpu_the_pattern_used(built: Built) -> None:
    by_id = {r["pattern_id"]: r for r in built.csv_rows}
    for pid in done_ids(built):
        res, row = result(built, pid), by_id[pid]
        gpus = res["description"]["gpus_used"]
        assert gpus == (2 if res["description"]["backend"] in ("tcp", "efa") else 1)
        assert int(row["gpus_used"]) == gpus
        assert float(row["output_throughput_per_gpu"]) == pytest.approx(res["output_throughput"] / gpus)
        assert float(row["total_token_throughput_per_gpu"]) == pytest.approx(res["total_token_throughput"] / gpus)


def test_failed_and_missing_rows_say_why(built: Built) -> None:
    record = json.loads((built.results / "failures" / f"{FAILING}.json").read_text())
    by_id = {r["pattern_id"]: r for r in built.csv_rows}
    failed = by_id[FAILING]
    assert failed["status"] == "failed"
    assert (failed["failure_step"], failed["failure_node"], failed["failure_cause"]) == (record["step"], record["node"], record["cause"])
    assert failed["output_throughput_per_gpu"] == "" and failed["gpus_used"] == "2"
    missing = [r for r in built.csv_rows if r["status"] == "missing"]
    assert all(r["detail"] and r["completed"] == "" for r in missing)


# -- report.html ------------------------------------------------------------------------------

class Page(HTMLParser):
    """The tags a self-contained report may and may not have."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str | None]] = []
        self.stack: list[str] = []
        self.figures: list[dict[str, object]] = []
        self.external: list[str] = []
        self.sections = 0
        self.section_banners = 0
        self._in_section = False
        self._banner_seen = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.stack.append(tag)
        if tag in ("link", "script", "iframe", "object", "embed"):
            self.external.append(tag)
        for key in ("src", "href"):
            if a.get(key) and not str(a[key]).startswith(("data:", "#")):
                self.external.append(f"{tag} {key}={a[key]}")
        if tag == "section":
            self.sections += 1
            self._in_section, self._banner_seen = True, False
        if tag == "p" and a.get("class") == "sim" and self._in_section and not self._banner_seen:
            self.section_banners += 1
            self._banner_seen = True
        if tag == "figure":
            self.figures.append({"img": None, "caption": False})
        if tag == "img":
            self.imgs.append(a)
            if "figure" in self.stack and self.figures:
                self.figures[-1]["img"] = a

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop() == tag:
                break
        if tag == "section":
            self._in_section = False

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "figcaption" and self.figures:
            self.figures[-1]["caption"] = bool(data.strip())


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def test_html_is_one_self_contained_file(built: Built) -> None:
    text = built.html
    assert "://" not in text, "no http(s):// (or any other scheme://) reference at all"
    assert "url(" not in text and "@import" not in text
    page = parse(text)
    assert page.external == []
    data_imgs = [i for i in page.imgs if str(i.get("src", "")).startswith("data:image/png;base64,")]
    assert len(data_imgs) >= 4 and len(data_imgs) == len(page.imgs)
    for img in data_imgs:
        assert base64.b64decode(str(img["src"]).split(",", 1)[1]).startswith(PNG_MAGIC)
        assert img.get("alt"), "every plot has alt text"


def test_every_plot_is_a_figure_with_a_caption(built: Built) -> None:
    page = parse(built.html)
    assert len(page.figures) == len(page.imgs) >= 4
    assert all(f["img"] is not None and f["caption"] for f in page.figures)


def test_html_names_every_pattern_of_the_plan(built: Built) -> None:
    for pid in plan_ids(built.plan):
        assert pid in built.html, pid


def test_simulated_banner_on_every_section_and_plot(built: Built) -> None:
    page = parse(built.html)
    assert page.sections >= 4 and page.section_banners == page.sections
    assert all(SIM_BANNER in str(i["alt"]) for i in page.imgs)
    text = html.unescape(built.html)
    assert text.count("SIMULATED") >= page.sections + len(page.imgs)
    assert SIM_BANNER in built.md


def test_failed_pattern_is_listed_with_step_and_cause(built: Built) -> None:
    record = json.loads((built.results / "failures" / f"{FAILING}.json").read_text())
    text = html.unescape(built.html)
    problems = text[text.index('id="problems"'):]
    assert FAILING in problems
    assert f"step {record['step']} on {record['node']}: {record['cause']}" in problems
    for pid in (r for r in plan_ids(built.plan) if r not in done_ids(built) and r != FAILING):
        assert pid in problems, f"missing pattern {pid} is listed"


def test_summary_numbers_come_from_the_results(built: Built) -> None:
    """The speedups shown are the ratios of the result files' numbers, vs unified at each shared point."""
    text = html.unescape(built.html)
    checked = 0
    for tokens in ("1k", "4k"):
        base = result(built, f"p14-unified-{tokens}-c1")
        for backend in ("tcp", "efa"):
            treat = result(built, f"p14-{backend}-{tokens}-c1")
            ttft = base["median_ttft_ms"] / treat["median_ttft_ms"]
            per_gpu = (treat["output_throughput"] / 2) / (base["output_throughput"] / 1)
            row = next(line for line in text.splitlines() if f"p14-{backend}-{tokens}-c1 / p14-unified-{tokens}-c1" in line)
            assert f"{ttft:.2f}x" in row and f"{per_gpu:.2f}x" in row, row
            checked += 1
    assert checked == 4
    assert "EFA beat TCP" in text and "EFA beat the unified baseline" in text


def test_plot_without_data_says_so_instead_of_an_empty_image(built: Built) -> None:
    assert "No valid open-loop" in built.html and "No valid open-loop" in built.md
    assert not (built.results / "report_plots" / "latency_vs_request_rate.png").exists()


# -- report.md and the plot files -------------------------------------------------------------

def test_markdown_references_existing_png_files(built: Built) -> None:
    refs = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", built.md)
    assert len(refs) >= 4
    for ref in refs:
        assert not ref.startswith("/") and "://" not in ref, "relative references only"
        path = (built.md_path.parent / ref).resolve()
        assert path.read_bytes().startswith(PNG_MAGIC), ref
        assert path in {p.resolve() for p in built.plots}
    for pid in plan_ids(built.plan):
        assert pid in built.md


def test_returned_plot_files_are_the_known_plots(built: Built) -> None:
    names = [p.stem for p in built.plots]
    fixed = [n for n in names if not n.startswith("pareto_")]
    assert fixed == [n for n in PLOT_NAMES if n in names] and len(fixed) >= 4
    assert names == fixed + [f"pareto_{axis}_{w}" for w in ("1000in_10out", "4000in_10out") for axis in ("interactivity", "ttft_p99")]
    assert all(p.exists() and p.read_bytes().startswith(PNG_MAGIC) for p in built.plots)


def test_identical_inputs_give_identical_reports(built: Built, tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        d = tmp_path / name
        plots = write_report(built.plan, built.results, d / "report.html", d / "report.md", d / "plots", generated_at="T")
        outs.append(((d / "report.html").read_bytes(), (d / "report.md").read_bytes(), [p.read_bytes() for p in plots]))
    assert outs[0] == outs[1]
    assert built.html.count("Generated ") == 1, "one generation time, in the footer"


def test_a_corrupt_result_file_is_reported_not_fatal(built: Built, tmp_path: Path) -> None:
    results = tmp_path / PHASE
    for sub in ("runs", "failures"):
        shutil.copytree(built.results / sub, results / sub)
    broken = results / "runs" / "p14-efa-1k-c1.json"
    broken.write_text('{"completed": 30, "truncated')
    rows = write_summary(built.plan, results, results / "summary.csv")
    row = next(r for r in rows if r["pattern_id"] == "p14-efa-1k-c1")
    assert row["status"] == "corrupt" and str(broken) in row["detail"]
    with (results / "summary.csv").open(newline="") as fh:
        assert next(r for r in csv.DictReader(fh) if r["pattern_id"] == "p14-efa-1k-c1")["status"] == "corrupt"
    plots = write_report(built.plan, results, results / "report.html", results / "report.md", results / "plots")
    text = html.unescape((results / "report.html").read_text())
    problems = text[text.index('id="problems"'):]
    assert "corrupt" in problems and str(broken) in problems
    assert len(plots) >= 4, "the other results still make their plots"


def test_an_invalid_result_is_listed_and_left_out_of_the_comparison(built: Built, tmp_path: Path) -> None:
    results = tmp_path / PHASE
    for sub in ("runs", "failures"):
        shutil.copytree(built.results / sub, results / sub)
    path = results / "runs" / "p14-tcp-1k-c1.json"
    doc = json.loads(path.read_text())
    reason = f"only 0 KV transfers for {doc['completed']} completed requests: the decode server re-prefilled locally"
    doc["validity"] = {"valid": False, "reasons": [reason]}
    doc["kv_transfer"].update(valid=False, reason=reason, transfers=0)
    path.write_text(json.dumps(doc))
    rows = write_summary(built.plan, results, results / "summary.csv")
    row = next(r for r in rows if r["pattern_id"] == "p14-tcp-1k-c1")
    assert row["status"] == "done" and row["validity"] == "invalid" and row["validity_reason"] == reason
    write_report(built.plan, results, results / "report.html", results / "report.md", results / "plots")
    text = html.unescape((results / "report.html").read_text())
    problems = text[text.index('id="problems"'):]
    assert "p14-tcp-1k-c1" in problems and reason in problems
    assert "p14-tcp-1k-c1 / " not in text and "/ p14-tcp-1k-c1" not in text, "no speedup from an invalid result"
    assert "p14-efa-1k-c1 / p14-unified-1k-c1" in text


def test_a_plan_with_no_results_yet_still_reports(built: Built, tmp_path: Path) -> None:
    results = tmp_path / PHASE
    rows = write_summary(built.plan, results, tmp_path / "summary.csv")
    assert [r["status"] for r in rows] == ["missing"] * len(built.plan.patterns)
    plots = write_report(built.plan, results, tmp_path / "report.html", tmp_path / "report.md", tmp_path / "plots")
    text = (tmp_path / "report.html").read_text()
    assert plots == [] and "<img" not in text and "not comparable yet" in text
    assert SIM_BANNER not in text, "no result, nothing simulated to label"
    assert text.count('class="nodata"') == len(PLOT_NAMES)
    for pid in plan_ids(built.plan):
        assert pid in text


# -- the answer section: which configuration to deploy, per workload -----------------------------

WORKLOADS = {"1000 in / 10 out": "1000in_10out", "4000 in / 10 out": "4000in_10out"}


def per_gpu(b: Built, pid: str) -> float:
    res = result(b, pid)
    return res["output_throughput"] / res["description"]["gpus_used"]


def by_workload(b: Built) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for r in b.csv_rows:
        if r["status"] == "done":
            out.setdefault(r["workload"], []).append(r)
    return out


def answer_part(text: str) -> str:
    return text[text.index('<section id="answer">'):text.index('<section id="summary">')]


def test_summary_recommends_one_configuration_per_workload_and_prices_it(built: Built) -> None:
    last = [*ANSWER_COLUMNS, *PREFIX_CACHE_COLUMNS]
    assert list(built.csv_rows[0])[-len(last):] == last
    assert all(r["prefix_hit_rate_expected"] == "" for r in built.csv_rows)  # phase14 has no workload
    groups = by_workload(built)
    assert sorted(groups) == sorted(WORKLOADS)
    price = load_config_file()["estimate"]["prices_usd_per_hour"]["g5.12xlarge"] / 4  # 4 GPUs per g5.12xlarge
    for members in groups.values():
        best = max(members, key=lambda r: per_gpu(built, r["pattern_id"]))  # phase14 has no SLO: tok/s per GPU decides
        assert [r["pattern_id"] for r in members if r["recommended"] == "true"] == [best["pattern_id"]]
        assert sorted(int(r["recommendation_rank"]) for r in members) == [1, 2, 3] and best["recommendation_rank"] == "1"
        for r in members:
            res = result(built, r["pattern_id"])
            cost = price * res["description"]["gpus_used"] / (res["output_throughput"] * 3600) * 1e6
            assert float(r["cost_usd_per_m_output_tokens"]) == pytest.approx(cost) and r["slo"] == ""
    others = [r for r in built.csv_rows if r["status"] != "done"]
    assert others and all(r["recommended"] == r["recommendation_rank"] == r["cost_usd_per_m_output_tokens"] == "" for r in others)
    assert {r["workload"] for r in others} >= {"4000 in / 10 out", "20000 in / 10 out"}, "every row names its workload"


def test_report_answers_per_workload_in_html_and_markdown(built: Built) -> None:
    answer = answer_part(html.unescape(built.html))
    md = built.md[built.md.index("## The answer"):built.md.index("## Summary")]
    for name, members in by_workload(built).items():
        best = next(r for r in members if r["recommended"] == "true")
        cost = f"${fmt(float(best['cost_usd_per_m_output_tokens']))} per million output tokens"
        for doc in (answer, md):
            said = next(line for line in doc.splitlines() if re.sub(r'^(<p class="recommendation">|\*\*)', "", line).startswith(name))
            assert "no SLO in the plan" in said and f"deploy {best['backend']} {best['topology']} c=1 ({best['pattern_id']}, " in said
            assert cost in said and "significance not judged" in said
            assert f"Workload {name}" in doc
    assert answer.count('<table class="answer">') == 2 and answer.count("(recommended)") == 2
    page = parse(answer)
    assert len(page.figures) == len(page.imgs) == 4 and all(f["img"] is not None and f["caption"] for f in page.figures)
    assert all(SIM_BANNER in str(i["alt"]) and "throughput per GPU vs" in str(i["alt"]) for i in page.imgs)
    refs = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", md)
    assert refs == [f"report_plots/pareto_{axis}_{w}.png" for w in WORKLOADS.values() for axis in ("interactivity", "ttft_p99")]
    assert all((built.md_path.parent / ref).read_bytes().startswith(PNG_MAGIC) for ref in refs)


def slo_results(b: Built, dest: Path) -> Path:
    """A copy whose 1k results ran with an SLO none of them met (attainment 10/40/20 %), 4k ones one all met."""
    results = dest / PHASE
    for sub in ("runs", "failures"):
        shutil.copytree(b.results / sub, results / sub)
    for path in (results / "runs").glob("*.json"):
        doc = json.loads(path.read_text())
        one_k = doc["spec"]["prompt_tokens"] == 1000
        doc["spec"]["slo"] = {"ttft_ms": 1, "tpot_ms": 1} if one_k else {"ttft_ms": 60000}
        attainment = {"unified": 10.0, "tcp": 40.0, "efa": 20.0}[doc["spec"]["backend"]] if one_k else 100.0
        doc["slo_attainment_pct"], doc["request_goodput"] = attainment, doc["request_throughput"] * attainment / 100
        path.write_text(json.dumps(doc))
    return results


def test_no_configuration_meets_the_slo_and_a_missing_price_is_unknown(built: Built, tmp_path: Path) -> None:
    results = slo_results(built, tmp_path)
    rows = write_summary(built.plan, results, results / "summary.csv", prices={})
    write_report(built.plan, results, results / "report.html", results / "report.md", results / "plots", prices={})
    answer = answer_part(html.unescape((results / "report.html").read_text()))
    said = [line for line in answer.splitlines() if 'class="recommendation"' in line]
    assert len(said) == 2
    assert "no configuration meets the SLO" in said[0] and "Closest: tcp 1P1D c=1 (p14-tcp-1k-c1, 2 GPUs, simulated) with 40.0%" in said[0]
    goodput = {pid: result(built, pid)["request_throughput"] / result(built, pid)["description"]["gpus_used"]
               for pid in ("p14-unified-4k-c1", "p14-tcp-4k-c1", "p14-efa-4k-c1")}
    best = max(goodput, key=goodput.__getitem__)
    assert "SLO TTFT <= 60000 ms" in said[1] and f"({best}, " in said[1] and "good req/s per GPU at 100% SLO attainment" in said[1]
    assert "unknown (add g5.12xlarge to estimate.prices_usd_per_hour)" in said[1]
    assert re.search(r"\$\d", answer) is None, "no dollar amount without a price, least of all $0"
    assert answer.count("<td class=\"right\">unknown</td>") == 6
    assert [r["pattern_id"] for r in rows if r["recommended"]] == [best]
    assert all(r["recommended"] is False and r["recommendation_rank"] is None for r in rows if r["workload"] == "1000 in / 10 out"
               and r["status"] == "done")
    assert all(r["cost_usd_per_m_output_tokens"] is None for r in rows)
