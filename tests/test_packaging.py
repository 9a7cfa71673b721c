"""One dependency truth, two front doors; README's commands are what CI runs."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import ROOT


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_and_pyproject_declare_the_same_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_deps = {_name(d): d.replace(" ", "") for d in project["dependencies"] + project["optional-dependencies"]["test"] + project["optional-dependencies"]["bench"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_deps = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str) and _name(dep) not in ("python", "pip"):
            conda_deps[_name(dep)] = dep.replace(" ", "")
        elif isinstance(dep, dict):
            for pip_dep in dep["pip"]:
                if not pip_dep.startswith("-e"):
                    conda_deps[_name(pip_dep)] = pip_dep.replace(" ", "")
    assert conda_deps == pip_deps


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    test_cmd = next(c.strip() for c in commands if "test" in c and "make" in c)
    assert test_cmd in ci


def test_node_side_files_never_import_the_control_package() -> None:
    for path in list((ROOT / "scripts").rglob("*.py")) + list((ROOT / "remote").rglob("*.py")):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+disagglab", text, flags=re.M), path
