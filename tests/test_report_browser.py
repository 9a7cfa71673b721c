"""The phase report as a person sees it: built by Snakemake, opened in headless Chromium.
Also: building the report again leaves the MLflow run count unchanged."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from disagglab.plan.model import load_plan

from conftest import ROOT, Project, finished_copy

ARTIFACTS = ROOT / "test-artifacts"


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


def test_report_in_headless_chromium(built: Project) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    try:
        page = built.root / "results/phase14/report.html"
        driver.get(page.as_uri())
        assert "phase14" in driver.title
        h1 = driver.find_element(By.TAG_NAME, "h1").text
        assert h1.startswith("phase14 report")
        loaded = driver.execute_script("return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
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
    finally:
        driver.quit()


def test_report_twice_keeps_one_mlflow_run_per_pattern(built: Project) -> None:
    db = built.root / "results/mlflow.db"
    first = mlflow_runs(db)
    assert [name for name, _ in first] == sorted(f"p14-{b}-{t}-c1" for b in ("unified", "tcp", "efa") for t in ("1k", "4k"))
    assert {status for _, status in first} == {"current"}
    again = built.snakemake("results/phase14/report.html", "--forcerun", "report", "track_phase")
    assert again.returncode == 0, again.stderr[-3000:]
    assert mlflow_runs(db) == first
    assert "0 created, 6 unchanged" in (built.root / "results/phase14/logs/mlflow.log").read_text()
