"""The phase report as a person sees it: built by Snakemake, opened in headless Chromium.
Also: building the report again leaves the MLflow run count unchanged, and phase16's report
answers per GPU by topology."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from disagglab.plan.model import load_plan

from browser import ARTIFACTS, answer_section, loaded_images
from conftest import Project, finished_copy, make_project


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, finished_l0: Project) -> Project:
    p = finished_copy(finished_l0, tmp_path_factory.mktemp("report") / "proj")
    out = p.snakemake("results/phase14/report.html")
    assert out.returncode == 0, out.stderr[-3000:]
    return p


def mlflow_runs(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as con:
        return sorted(con.execute(
            "select r.name, t.value from runs r join experiments e on r.experiment_id = e.experiment_id "
            "join tags t on t.run_uuid = r.run_uuid and t.key = 'status' where e.name = 'disagglab-phase14'").fetchall())


def test_report_in_headless_chromium(built: Project, chromium) -> None:
    from selenium.webdriver.common.by import By

    driver = chromium
    page = built.root / "results/phase14/report.html"
    driver.get(page.as_uri())
    assert "phase14" in driver.title
    h1 = driver.find_element(By.TAG_NAME, "h1").text
    assert h1.startswith("phase14 report")
    loaded = loaded_images(driver)
    assert loaded >= 4 and loaded == len(driver.find_elements(By.TAG_NAME, "img"))
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "SIMULATED (vLLM stand-in, not real GPU measurements)" in body
    every = list(load_plan(built.root / "plans/phase14.json").patterns)  # L1 is a sweep: its ids are expanded
    assert len(every) == 6 + 12 + 12  # L0, L1, L2
    assert [pid for pid in every if pid not in body] == []  # patterns without a result are named too
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    ARTIFACTS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / "report-phase14.png"))
    assert (ARTIFACTS / "report-phase14.png").stat().st_size > 10_000

    # The answer: per workload a recommendation, its table and both trade-off plots, all loaded.
    answer = answer_section(driver)
    assert answer["banner"] and answer["workloads"] == ["Workload 1000 in / 10 out", "Workload 4000 in / 10 out"]
    assert len(answer["sentences"]) == 2 and all(" deploy " in s and "per million output tokens" in s for s in answer["sentences"])
    assert [len(t) for t in answer["tables"]] == [3, 3] and [t[0][0] for t in answer["tables"]] == ["1 (recommended)"] * 2
    for sentence, table in zip(answer["sentences"], answer["tables"]):
        assert f"deploy {table[0][1]} ({table[0][12]}, " in sentence  # the sentence names the table's first row
    assert [i["id"] for i in answer["images"]] == [f"plot-pareto_{axis}_{w}" for w in ("1000in_10out", "4000in_10out")
                                                    for axis in ("interactivity", "ttft_p99")]
    assert all(i["loaded"] and "SIMULATED" in i["alt"] for i in answer["images"])
    driver.execute_script("document.getElementById('answer').scrollIntoView()")
    assert driver.save_screenshot(str(ARTIFACTS / "report-phase14-answer.png"))


def test_report_twice_keeps_one_mlflow_run_per_pattern(built: Project) -> None:
    db = built.root / "results/mlflow.db"
    first = mlflow_runs(db)
    assert [name for name, _ in first] == sorted(f"p14-{b}-{t}-c1" for b in ("unified", "tcp", "efa") for t in ("1k", "4k"))
    assert {status for _, status in first} == {"current"}
    again = built.snakemake("results/phase14/report.html", "--forcerun", "report", "track_phase")
    assert again.returncode == 0, again.stderr[-3000:]
    assert mlflow_runs(db) == first
    assert "0 created, 6 unchanged" in (built.root / "results/phase14/logs/mlflow.log").read_text()


@pytest.fixture(scope="module")
def phase16(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """phase16 run whole with the stand-in: ten configurations, 2 to 4 GPUs, one workload (~90 s)."""
    p = make_project(tmp_path_factory.mktemp("phase16") / "proj")
    out = p.snakemake("results/phase16/L0.done", "results/phase16/L1.done")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    made = p.snakemake("results/phase16/report.html")
    assert made.returncode == 0, made.stderr[-3000:]
    return p


def test_phase16_report_answers_per_gpu_by_topology_in_chromium(phase16: Project, chromium) -> None:
    from selenium.webdriver.common.by import By

    driver = chromium
    driver.get((phase16.root / "results/phase16/report.html").as_uri())
    assert loaded_images(driver) == len(driver.find_elements(By.TAG_NAME, "img"))
    plot = driver.find_element(By.CSS_SELECTOR, "#plot-throughput_per_gpu_by_topology + figure img")
    assert plot.get_attribute("alt").startswith("Throughput per GPU by topology") and plot.get_property("naturalWidth") > 400
    answer = driver.find_element(By.CSS_SELECTOR, "p.topology-answer").text
    assert answer.startswith("At 4000 tok c=8, ") and "serves the most output tok/s per GPU" in answer
    table = driver.find_element(By.CSS_SELECTOR, "table.topologies")
    cells = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    configurations = {c[2] for c in cells}
    assert configurations == {f"{b} {t}" for b in ("tcp", "efa") for t in ("1P1D", "1P2D", "2P1D", "2P2D")} | {
        "unified 2 replicas", "unified 4 replicas"}
    per_gpu = [float(c[4].split()[0]) for c in cells]
    assert per_gpu == sorted(per_gpu, reverse=True) and cells[0][9] == "best"
    assert answer.split(", ")[1].startswith(cells[0][2])  # the sentence names the table's first row
    gpus = {c[2]: int(c[3]) for c in cells}
    assert gpus["tcp 2P1D"] == 3 and gpus["efa 2P2D"] == 4 and gpus["unified 2 replicas"] == 2
    # The answer agrees with the per-GPU ranking: no SLO, one workload, so the best per GPU is the one to deploy.
    answer = answer_section(driver)
    assert answer["workloads"] == ["Workload 4000 in / 64 out"] and len(answer["tables"]) == 1
    [sentence] = answer["sentences"]
    assert f"deploy {cells[0][2]} c=8 ({cells[0][10]}, " in sentence and "no SLO in the plan" in sentence
    assert len(answer["tables"][0]) == len(cells) == 10
    assert [i["id"] for i in answer["images"]] == ["plot-pareto_interactivity_4000in_64out", "plot-pareto_ttft_p99_4000in_64out"]
    assert all(i["loaded"] for i in answer["images"])
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    driver.execute_script("document.getElementById('topologies').scrollIntoView()")
    ARTIFACTS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / "report-phase16-topologies.png"))
