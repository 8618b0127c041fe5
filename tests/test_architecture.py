"""The import rules of ARCHITECTURE.md, checked by import-linter (contracts in pyproject.toml).

The second test proves the check can fail: it copies the code, adds one forbidden import of
each kind, and expects lint-imports to name the broken contract.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": f"{root / 'platform'}:{root}", "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("platform/backdrop/pipeline.py", "import ray", "Models and pipeline know no Ray, MLflow or HTTP"),
    ("platform/backdrop/models/generator.py", "import mlflow", "Models and pipeline know no Ray, MLflow or HTTP"),
    ("platform/backdrop/registry.py", "from . import runtime", "The registry is a leaf adapter"),
    ("platform/backdrop/runtime.py", "from .batch import run", "Layers"),
    ("platform/backdrop/storage.py", "from . import cli", "The leaves import no layer above them"),
    ("platform/backdrop/batch/run.py", "import serve_apps.app", "The library never imports a front door"),
    ("serve_apps/app.py", "import backdrop.cli", "Front doors never import each other"),
    ("platform/backdrop/inputs.py", "from . import pipeline", "The leaves import no layer above them"),
    ("platform/backdrop/catalog.py", "import torch", "Reading catalogs and inputs imports no torch"),
])
def test_a_forbidden_import_breaks_the_check(tmp_path, module, line, contract):
    root = tmp_path / "repo"
    for part in ("platform", "serve_apps", "jobs"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    target = root / module
    target.write_text(target.read_text() + f"\n{line}  # added by the test\n")
    result = lint(root)
    assert result.returncode != 0
    assert contract in result.stdout and "BROKEN" in result.stdout


def test_reading_catalogs_and_inputs_loads_no_torch():
    """What the contract allows indirectly (schedulers imports diffusers inside a function) must
    not load torch when the batch job's CPU stages import the leaves."""
    code = ("import sys; import backdrop.catalog, backdrop.inputs, backdrop.request, backdrop.limits, "
            "backdrop.placements, backdrop.imaging, backdrop.storage; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    env = {"PYTHONPATH": str(REPO / "platform"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
