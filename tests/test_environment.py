"""The packaging promises: environment.yml mirrors pyproject.toml, and profiles switch params.yaml cleanly."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from claimsutil.config import REPLACED_WHOLE, ParamsError, load_params, profile_names, use_profile

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    name, _, version = requirement.partition("==")
    return f"{re.sub(r'[-_.]+', '-', name.strip().lower())}=={version.strip()}"


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip
    assert {_normalise(r) for r in pip if r != "-e ."} == wanted
    assert all("==" in r for r in project["dependencies"]), "every runtime dependency is pinned"
    assert "torch==2.13.0" in project["dependencies"]


def test_committed_params_are_the_demo_profile():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    demo = yaml.safe_load((ROOT / "profiles" / "demo.yaml").read_text())

    def check(overlay: dict, target: dict, prefix: str = "") -> None:
        for key, value in overlay.items():
            if isinstance(value, dict):
                check(value, target[key], f"{prefix}{key}.")
            else:
                assert target[key] == value, f"params.yaml {prefix}{key} differs from profiles/demo.yaml"

    check(demo, params)
    assert load_params(ROOT / "params.yaml").profile == "demo"


def _keys(d: dict, prefix: str = "") -> set[str]:
    def leaf(key: str, value) -> bool:
        return not isinstance(value, dict) or key in REPLACED_WHOLE

    return {k2 for k, v in d.items()
            for k2 in ({prefix + k} if leaf(prefix + k, v) else _keys(v, f"{prefix}{k}."))}  # fmt: skip


def test_profiles_set_the_same_keys():
    """Switching profile A -> B -> A restores A exactly only if every profile sets the same keys."""
    names = profile_names(ROOT)
    assert {"demo", "tiny", "paper"} <= set(names)
    keys = {n: _keys(yaml.safe_load((ROOT / "profiles" / f"{n}.yaml").read_text())) for n in names}
    assert all(k == keys["demo"] for k in keys.values()), keys


@pytest.fixture
def project(tmp_path) -> Path:
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    return tmp_path


def test_use_profile_rewrites_only_profile_keys(project):
    before = (project / "params.yaml").read_text()
    changed = use_profile("tiny", project)
    assert "synth.patients" in changed
    params = load_params(project / "params.yaml")
    assert params.profile == "tiny" and params.synth.patients == 8000
    text = (project / "params.yaml").read_text()
    assert "# Every knob the study has" in text  # comments survive
    use_profile("demo", project)
    assert (project / "params.yaml").read_text() == before
    changed = use_profile("paper", project)  # a profile's own model ladder replaces the whole ladder
    assert "laws.sizes" in changed and set(load_params(project / "params.yaml").laws.sizes) == set(
        yaml.safe_load((project / "profiles" / "paper.yaml").read_text())["laws"]["sizes"]
    )
    use_profile("demo", project)
    assert (project / "params.yaml").read_text() == before


def test_bad_params_name_key_and_value(project):
    with pytest.raises(ParamsError, match="unknown profile 'huge'"):
        use_profile("huge", project)
    text = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(text.replace("shard_size: 32500", "shard_size: 1500"))
    with pytest.raises(ParamsError, match=r"synth.shard_size = 1500 must be a positive multiple"):
        load_params(project / "params.yaml")
    (project / "params.yaml").write_text(text.replace("hospitals: 32", "hospitals: 32\n  hospital: 3"))
    with pytest.raises(ParamsError, match=r"unknown key\(s\) \['hospital'\] in section 'synth'"):
        load_params(project / "params.yaml")
    (project / "params.yaml").write_text(text.replace("patients: 130000", "patients: many"))
    with pytest.raises(ParamsError, match="synth.patients = 'many' must be an integer"):
        load_params(project / "params.yaml")
