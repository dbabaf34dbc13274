"""action.yml: valid against the GitHub Action metadata schema (SchemaStore's, as check-jsonschema vendors it), and
every shell step passes shellcheck (what actionlint runs on a workflow's scripts; actionlint itself cannot be
installed here: its PyPI package downloads the binary while building, and no such download is reachable)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ACTION = ROOT / "action.yml"


def _check_schema(data: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "action.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cmd = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-actions", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_action_matches_the_action_schema(tmp_path: Path) -> None:
    action = yaml.safe_load(ACTION.read_text())
    r = _check_schema(action, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    broken = copy.deepcopy(action)
    broken["runs"]["steps"][0]["shell"] = None  # a composite step's run needs its shell
    broken["inputs"]["mode"]["required"] = "yes"
    assert _check_schema(broken, tmp_path).returncode != 0


def _steps() -> list[dict[str, Any]]:
    return [s for s in yaml.safe_load(ACTION.read_text())["runs"]["steps"] if "run" in s]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (.ci/run installs it)")
@pytest.mark.parametrize("index", range(len(_steps())))
def test_action_step_passes_shellcheck(index: int, tmp_path: Path) -> None:
    step = _steps()[index]
    script = step["run"]
    # ${{ }} in a script is a template injection risk: values come through env.
    assert "${{" not in script, "use env: for expressions"
    path = tmp_path / "step.sh"
    path.write_text("#!/usr/bin/env bash\n" + script)
    r = subprocess.run(["shellcheck", "--shell=bash", "--severity=style", str(path)], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stdout


def test_action_inputs_are_used() -> None:
    text = ACTION.read_text()
    for name in yaml.safe_load(text)["inputs"]:
        assert re.search(rf"inputs\.{re.escape(name)}\b", text), name


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (.ci/run installs it)")
def test_build_image_script_passes_shellcheck() -> None:
    script = ROOT / "deploy" / "build-image"
    r = subprocess.run(["shellcheck", "--severity=warning", str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout
