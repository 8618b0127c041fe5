"""The GPU benchmark's smoke run: the same script a GPU runs, at tiny size on the CPU."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_at_tiny_size_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu_benchmark.py")
    bench = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its recipe dataclass's annotations
    spec.loader.exec_module(bench)
    out = tmp_path / "gpu.json"
    assert bench.main(["--size", "tiny", "--device", "cpu", "--batches", "2", "--compiled-batches", "2",
                       "--steps", "2", "--fast-steps", "2", "--compile-backend", "eager", "--train-batch", "2",
                       "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["generation"]
    assert sorted((r["mode"], r["batch"], r["generator"], r["scheduler"]) for r in rows) == sorted(
        [("eager", 2, g, "ddim") for g in ("cg", "cg+pg")] + [("eager", 2, "cg+pg", "dpm++")]
        + [("compiled", 2, g, "ddim") for g in ("cg", "cg+pg")] + [("compiled", 2, "cg+pg", "dpm++")])
    assert all(r["product_bit_identical"] and r["s_per_image"] > 0 and r["share_of_ceiling"] > 0 for r in rows)
    assert report["tflop_per_image"]["cg+pg"] > report["tflop_per_image"]["cg"] > 0
    assert report["matmul_ceiling_tflops"] > 0
    assert {mode: v["differing_values"] for mode, v in report["batch_invariance"].items()} == {
        "eager": 0, "compiled": 0}
    assert [t["stage"] for t in report["training"]] == ["cg", "pg"]
    assert all(t["loss_finite"] for t in report["training"])
    assert "| compiled | cg+pg | 2 |" in out.with_suffix(".md").read_text()
