"""benchmarks/brand_kits.py at its smallest (so it cannot rot): the kit's outputs equal the
inline references' pixel for pixel, and both negative controls (another brand's kit, no
reference) score below the kit on reference similarity."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_brand_kit_benchmark_runs_and_its_controls_fall_below_the_kit(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("brand_kits", ROOT / "benchmarks" / "brand_kits.py")
    bench = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name in ("BACKDROP_HOME", "MLFLOW_TRACKING_URI", "BACKDROP_ALLOW_INPUTS"):
        monkeypatch.delenv(name, raising=False)  # the benchmark sets its own; restored after
    assert bench.main(["--quick", "--results-dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "brand_kits-quick.json").read_text())
    assert summary["kit_equals_inline_pixels"] == "3/3" and summary["controls_below_kit"] is True
    configs = summary["configs"]
    assert configs["kit"]["reference_similarity"] == configs["inline"]["reference_similarity"]
