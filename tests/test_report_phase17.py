"""phase17's report in headless Chromium: an answer per workload (shared prefix, two traces, a
length mix), each with its recommendation, its table and both trade-off plots, and the prefix
cache's measured hit rate beside the expected one.

phase17 runs whole with the stand-in, trimmed to stay quick: 12 measured requests per pattern
and the traces replayed twenty times faster (their first 12 requests).
"""

from __future__ import annotations

import csv
import json

import pytest

from browser import ARTIFACTS, answer_section, loaded_images
from conftest import Project, make_project

WORKLOADS = ["Workload 2048 in / 40 out, shared_prefix 1536x4",
             "Workload trace traces/sample.mooncake.jsonl (mooncake), max_requests 12, time_scale 0.05",
             "Workload trace traces/sample.azure.csv (azure), max_requests 12, time_scale 0.05",
             "Workload lengths lognormal(mean 1024, sigma 0.5) in / uniform 8-32 out, at most 2048 in / 40 out"]


@pytest.fixture(scope="module")
def phase17(tmp_path_factory: pytest.TempPathFactory) -> Project:
    p = make_project(tmp_path_factory.mktemp("phase17") / "proj")
    doc = p.plan("phase17")
    doc["common_settings"].update(warmup_iterations=2, measurement_iterations=12)
    for layer in doc["layers"]:
        for pat in layer["patterns"]:
            if pat["workload"]["kind"] == "trace":
                pat["workload"].update(time_scale=0.05, max_requests=12)
    p.write_plan("phase17", doc)
    out = p.snakemake("results/phase17/all.done")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    made = p.snakemake("results/phase17/report.html")
    assert made.returncode == 0, made.stderr[-3000:]
    return p


def test_phase17_report_answers_per_workload_in_chromium(phase17: Project, chromium) -> None:
    driver = chromium
    driver.get((phase17.root / "results/phase17/report.html").as_uri())
    answer = answer_section(driver)
    assert answer["banner"] and answer["workloads"] == WORKLOADS
    assert len(answer["sentences"]) == 4 and all(" deploy " in s or "no configuration meets the SLO" in s for s in answer["sentences"])
    assert [len(t) for t in answer["tables"]] == [4, 2, 1, 2]
    assert len(answer["images"]) == 8 and all(i["loaded"] and "SIMULATED" in i["alt"] for i in answer["images"])
    assert loaded_images(driver) == driver.execute_script("return document.images.length")
    shared = {row[12]: row[13] for row in answer["tables"][0]}  # pattern -> prefix hits measured / expected
    for pid in ("p17-unified-2k-c4-sp-cache", "p17-tcp-2k-c4-sp-cache"):
        measured, expected = (float(x) for x in shared[pid].split(" / "))
        # 10 of 14 requests could reuse 1536 of 2048 tokens. An ideal sequential cache bounds what
        # 4 in flight can hit; the warmup's prefixes are cached before the measured requests start.
        assert expected == pytest.approx(10 * 1536 / (14 * 2048), abs=0.005) and 0 < measured <= expected + 0.005, shared
    assert shared["p17-unified-2k-c4-sp-nocache"] == "- / 0.00"
    assert [row[13] for row in answer["tables"][2]] == ["- / 0.00"]  # the Azure trace: caching off, nothing to hit
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    driver.execute_script("document.getElementById('answer').scrollIntoView()")
    ARTIFACTS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / "report-phase17-answer.png"))


def test_phase17_summary_has_the_prefix_cache_beside_the_answer(phase17: Project) -> None:
    rows = {r["pattern_id"]: r for r in csv.DictReader((phase17.root / "results/phase17/summary.csv").open())}
    assert len(rows) == 9 and sum(r["recommended"] == "true" for r in rows.values()) == 4
    on = rows["p17-unified-2k-c4-sp-cache"]
    result = json.loads((phase17.root / "results/phase17/runs/p17-unified-2k-c4-sp-cache.json").read_text())
    check = result["workload"]["prefix_cache"]
    assert float(on["prefix_hit_rate_measured"]) == pytest.approx(check["measured_hit_rate"])
    assert float(on["prefix_hit_rate_expected"]) == pytest.approx(check["expected_hit_rate"]) and on["prefix_hit_gap_flagged"] in ("true", "false")
    assert rows["p17-unified-2k-c4-lognormal"]["prefix_hit_rate_expected"] == "0.0"
