"""Shared fixtures: a throwaway copy of the project where Snakemake runs for real."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PROJECT_ITEMS = ("Snakefile", "rules", "config", "plans", "templates", "scripts", "remote", "profiles", "disagglab")
# Fast stand-in for tests: the same timing model, every duration scaled by 0.05.
TEST_TIME_SCALE = 0.05


@dataclass
class Project:
    root: Path

    def snakemake(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        full_env.pop("DISAGGLAB_CONFIG", None)
        return subprocess.run([SNAKEMAKE, *args], cwd=self.root, capture_output=True, text=True, timeout=timeout, env=full_env, check=False)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> str:
        """`python -m disagglab ...` in the project copy; returns stdout (asserts success)."""
        full_env = {**os.environ, **(env or {})}
        out = subprocess.run([sys.executable, "-m", "disagglab", *args], cwd=self.root, capture_output=True, text=True, timeout=60,
                             check=False, env=full_env)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def dry_run_jobs(self, target: str, env: dict[str, str] | None = None) -> dict[str, list[dict[str, str]]]:
        """rule -> [{wildcards..., 'reason': ...}] from a real `snakemake -n`."""
        out = self.snakemake("-n", target, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        return parse_dry_run(out.stdout + out.stderr)

    def plan(self, phase: str) -> dict:
        return json.loads((self.root / "plans" / f"{phase}.json").read_text())

    def write_plan(self, phase: str, doc: dict) -> None:
        (self.root / "plans" / f"{phase}.json").write_text(json.dumps(doc, indent=2))

    def result(self, phase: str, pattern: str) -> dict:
        return json.loads((self.root / "results" / phase / "runs" / f"{pattern}.json").read_text())


def load_script_module(name: str) -> ModuleType:
    """A part of the node-side client, imported as the node imports it (scripts/ first on the path)."""
    if sys.path[:1] != [str(ROOT / "scripts")]:
        sys.path.insert(0, str(ROOT / "scripts"))
    return importlib.import_module(name)


def parse_dry_run(text: str) -> dict[str, list[dict[str, str]]]:
    jobs: dict[str, list[dict[str, str]]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith(("rule ", "localrule ")) and stripped.endswith(":"):
            current = {}
            jobs.setdefault(stripped.split()[1].rstrip(":"), []).append(current)
        elif current is not None and stripped.startswith("wildcards:"):
            for part in stripped[len("wildcards:"):].split(","):
                if "=" in part:
                    k, v = part.strip().split("=", 1)
                    current[k] = v
        elif current is not None and stripped.startswith("reason:"):
            current["reason"] = stripped[len("reason:"):].strip()
    return jobs


def make_project(dest: Path, time_scale: float = TEST_TIME_SCALE) -> Project:
    dest.mkdir(parents=True, exist_ok=True)
    for item in PROJECT_ITEMS:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / item)
    cfg = dest / "config" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("\nsim:\n", f"\nsim:\n  time_scale: {time_scale}\n"))
    return Project(dest)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "proj")


FINISHED_TARGET = "results/phase14/L0.done"


def copy_state(src: Path, dest: Project) -> None:
    """A finished phase moved to another folder: its results/ and Snakemake's metadata."""
    for item in ("results", ".snakemake"):
        shutil.copytree(src / item, dest.root / item, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete"))


@pytest.fixture(scope="session")
def finished_l0(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """phase14 L0 run to the end once per session (once per xdist worker).

    Building it costs ~40 s of CPU, and a dozen modules need one; they take a copy
    (`finished_copy`) and never touch this one, so each still owns its folders and ports.
    """
    proj = make_project(tmp_path_factory.mktemp("finished-l0") / "proj")
    out = proj.snakemake(FINISHED_TARGET)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert alive_groups(ledger_entries(proj.root)) == []
    return proj


def finished_copy(finished: Project, dest: Path) -> Project:
    """A fresh project copy holding the finished phase14 L0 (a moved phase is as finished: issue 15)."""
    proj = make_project(dest)
    copy_state(finished.root, proj)
    return proj


def ledger_entries(root: Path) -> list[dict]:
    """Every process the node runners recorded, across all local nodes and patterns."""
    entries = []
    for ledger in (root / "results" / ".local" / "nodes").glob("*/*/runs/*/procs.json"):
        entries.extend(json.loads(ledger.read_text()))
    return entries


def live_group_members(pgid: int) -> list[int]:
    """Processes of a group that are not zombies (zombies hold no port, no GPU, no memory)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def alive_groups(entries: list[dict]) -> list[dict]:
    return [e for e in entries if live_group_members(e["pgid"])]


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory):
    """One real S3 server (SeaweedFS) for the whole session."""
    import tempfile

    from seaweed import start_seaweed

    # Not under pytest's basetemp: a concurrent pytest run prunes old basetemps, which would
    # delete the filer's store under a live server.
    data = Path(tempfile.mkdtemp(prefix="disagglab-seaweed-"))
    server = start_seaweed(data)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def s3_env(seaweed, monkeypatch: pytest.MonkeyPatch):
    """Point boto3 in this process (and children) at the test S3 server."""
    for key, value in seaweed.env().items():
        monkeypatch.setenv(key, value)
    return seaweed


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory: pytest.TempPathFactory):
    """After the whole session, no process started from a test folder may still run."""
    yield
    import signal

    base = str(tmp_path_factory.getbasetemp())
    leaked = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            pid = int(cmdline.parent.name)
        except (OSError, ValueError):
            continue
        if base in text and pid != os.getpid() and _running(pid):
            leaked.append((pid, text[:200]))
    for pid, _ in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert leaked == [], f"processes left running by the tests (now killed): {leaked}"


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def chromium():
    """A headless Chromium driven by Selenium (the report tests: a real browser loads the page)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()
