"""The pipeline's declarations cannot drift from the code: every stage depends on every module it imports,
lists params per key (never an execution knob), and every notebook is thin.

A stage's import closure starts from its commands (`python -m claimsutil.x`, and for papermill the
notebook's code cells), follows every `claimsutil` import in those modules, lazy imports inside functions
included, and always holds `claimsutil/__init__.py` (imported with any submodule).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from claimsutil.config import SECTIONS, execution_fields, load_params, stage_fields

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "claimsutil"
MAX_CELL_LINES = 10


def _module_file(name: str) -> Path | None:
    """The source file of module NAME (a package: its __init__.py), or None outside the package."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _imports(tree: ast.AST, current: str) -> set[str]:
    """Every module an AST imports (absolute names; `from pkg import mod` counts pkg.mod when it is one)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{current}: relative import (the package uses absolute imports only)"
            base = node.module or ""
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if _module_file(f"{base}.{alias.name}")}
    return found


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def closure(start: set[str]) -> set[Path]:
    """Files of every claimsutil module reachable from the modules START."""
    todo = set().union(*(_with_parents(m) for m in start)) if start else set()
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        files.add(path)
        for module in _imports(ast.parse(path.read_text(encoding="utf-8")), name):
            todo |= _with_parents(module)
    return files


def _notebook_modules(path: Path) -> set[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    source = "\n".join(
        "\n".join(line for line in "".join(c["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
        for c in nb["cells"]
        if c["cell_type"] == "code"
    )
    return _imports(ast.parse(source), "__notebook__")


def _commands(stage: dict) -> list[str]:
    cmd = stage["cmd"]
    return [cmd] if isinstance(cmd, str) else list(cmd)


def _stages() -> dict[str, dict]:
    """Every stage of dvc.yaml, foreach stages expanded to their first scale (all scales share the template)."""
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    scales = list(load_params(ROOT / "params.yaml").scales)
    out = {}
    for name, stage in doc["stages"].items():
        if "foreach" in stage:
            text = json.dumps(stage["do"]).replace("${key}", scales[0])
            out[f"{name}@{scales[0]}"] = json.loads(text)
        else:
            out[name] = stage
    return out


def _stage_modules(stage: dict) -> set[str]:
    modules: set[str] = set()
    for command in _commands(stage):
        modules |= set(re.findall(r"-m (claimsutil[\w.]*)", command))
        for notebook in re.findall(r"(notebooks/\S+\.ipynb)", command):
            if (ROOT / notebook).is_file() and "papermill" in command and f" {notebook} " in f" {command} ":
                modules |= _notebook_modules(ROOT / notebook)
                break
    return modules


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


STAGES = _stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_every_module_it_imports(name):
    stage = STAGES[name]
    files = closure(_stage_modules(stage))
    assert files, f"{name}: no claimsutil module found in its commands"
    deps = [str(d) for d in stage.get("deps", [])]
    missing = sorted(str(f.relative_to(ROOT)) for f in files if not _covered(f, deps))
    assert not missing, f"stage {name} imports these modules but does not list them as deps: {missing}"


def test_closure_follows_lazy_imports():
    files = {str(f.relative_to(ROOT)) for f in closure({"claimsutil.baseline"})}
    # baseline.run_task imports cohort and features inside the function, and cohort imports splits.
    assert {"claimsutil/features.py", "claimsutil/cohort.py", "claimsutil/splits.py", "claimsutil/config.py"} <= files
    assert "claimsutil/__init__.py" in files and "claimsutil/meds/__init__.py" in files
    notebook = closure(_notebook_modules(ROOT / "notebooks" / "01_cohort.ipynb"))
    assert ROOT / "claimsutil" / "synth" / "simulate.py" in notebook  # the oracle replays the generator


@pytest.mark.parametrize("name", sorted(STAGES))
def test_params_are_listed_per_key_and_never_execution_knobs(name):
    listed = [p for p in STAGES[name].get("params", []) if isinstance(p, str)]
    whole = [p for p in listed if p in SECTIONS]
    assert not whole, f"stage {name} lists whole sections {whole}: list the keys it reads"
    for key in listed:
        section, _, field = key.partition(".")
        if section in SECTIONS and field:
            assert field in {f.name for f in dataclasses.fields(SECTIONS[section])}, f"{name}: unknown param {key}"
            assert field not in execution_fields(SECTIONS[section]), f"{name} lists the execution knob {key}"


def test_every_result_knob_is_listed_by_some_stage():
    listed = {p for s in STAGES.values() for p in s.get("params", []) if isinstance(p, str)}
    listed |= {p.replace(list(load_params(ROOT / "params.yaml").scales)[0], "<scale>") for p in listed}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.name in execution_fields(cls) | stage_fields(cls):  # stage-set fields are the stage's own
                continue
            assert f"{section}.{f.name}" in listed, f"no stage lists {section}.{f.name}: changing it reruns nothing"


def test_params_yaml_holds_every_knob():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for section, cls in SECTIONS.items():
        written = set(raw.get(section, {})) | stage_fields(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in written]
        assert not missing, f"params.yaml section {section} lacks {missing} (every knob is written there)"


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_thin_and_committed_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    ids = [c.get("id") for c in nb["cells"]]  # nbformat 4.5: every cell has a unique id (else a warning every run)
    assert all(ids) and len(set(ids)) == len(ids), f"{path.name}: cells without a unique id"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and "parameters" in code[0].get("metadata", {}).get("tags", []), f"{path.name}: no parameters cell"
    for i, cell in enumerate(code):
        assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name}: cell {i} has outputs"
        lines = "".join(cell["source"]).splitlines()
        assert len(lines) <= MAX_CELL_LINES, (
            f"{path.name}: code cell {i} has {len(lines)} lines (at most {MAX_CELL_LINES}: move logic into claimsutil)"
        )
    parameters = ast.parse("".join(code[0]["source"]))
    for node in parameters.body:  # papermill injects literals; a computed default would not be recomputed
        assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant), (
            f"{path.name}: the parameters cell holds only literal assignments"
        )


def _path_without_the_venv() -> str:
    venv_bin = str(Path(sys.executable).parent)
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)


def test_stage_commands_find_the_projects_environment(tmp_path):
    """`dvc repro` from a shell without the venv activated: run-stage.sh uses the project's .venv, or says what
    to do when there is none (instead of a ModuleNotFoundError inside a stage)."""
    script = ROOT / "claimsutil" / "run-stage.sh"
    env = {"PATH": _path_without_the_venv(), "HOME": os.environ.get("HOME", "/tmp")}
    if (ROOT / ".venv" / "bin" / "python").is_file():
        found = subprocess.run(["sh", str(script), "python", "-c", "import claimsutil.meds, sys; print(sys.prefix)"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, check=False)  # fmt: skip
        assert found.returncode == 0, found.stderr
    elsewhere = tmp_path / "copy" / "claimsutil"
    elsewhere.mkdir(parents=True)
    shutil.copy(script, elsewhere / "run-stage.sh")  # a project without .venv, and no study on PATH
    bare = {**env, "PATH": "/usr/bin:/bin"}
    lost = subprocess.run(["sh", str(elsewhere / "run-stage.sh"), "python", "-c", "print(1)"], cwd=tmp_path,
                          env=bare, capture_output=True, text=True, check=False)  # fmt: skip
    assert lost.returncode == 2 and "make study" in lost.stderr and "source .venv/bin/activate" in lost.stderr
