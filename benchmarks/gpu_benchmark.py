"""The real-size generator at the chip's speed: one command, on a GPU (or at tiny size on a CPU).

    python benchmarks/gpu_benchmark.py                       # a GPU: SD-1.5 shapes, 512 px (~7 min)
    python benchmarks/gpu_benchmark.py --size tiny --device cpu --batches 1,2 --steps 2 \\
        --compile-backend eager --train-batch 2              # the CPU smoke run of the test suite

What it does, in one process and one run, so every ratio is measured side by side:

1. the card's matmul ceiling (an 8192^3 bf16 matmul on CUDA; 1024^3 fp32 on a CPU);
2. builds a base with SD-1.5-inpainting shapes and random weights (``--size sd15``: UNet
   859.5 M, VAE 83.7 M, CLIP text 123.1 M; ``tiny``: the tiny preset) and saves it as a bare
   diffusers folder, then loads it through ``runtime.load``: the path a user's real weights
   take (CG and PG are made fresh from the UNet);
3. counts FLOPs of one denoising step (``torch.utils.flop_counter.FlopCounterMode``), CG alone
   and CG+PG, classifier-free guidance included;
4. times whole generations (``--steps`` DDIM steps, CFG 2.0, after a warm-up) for each mode
   (``eager``, ``compiled``: torch.compile with CUDA graphs on a GPU) x batch (``--batches``,
   each its own batch bucket) x CG / CG+PG, and the recommended fewer-step scheduler
   (``--fast-scheduler`` at ``--fast-steps``) at the largest batch;
5. checks batch invariance in each mode (a row alone against the same row among other rows:
   differing pixel values, must be 0) and that the product is bit-identical in every output;
6. times one training step per stage (CG, PG) with ``StageTrainer`` as the Ray worker builds it.

Prints a table and writes ``benchmarks/results/gpu-<size>-<device>.json`` (and ``.md``).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from backdrop import config_files, runtime  # noqa: E402
from backdrop.config_files import knob  # noqa: E402
from backdrop.models.presets import build_sd15_inpainting_base, build_tiny_base  # noqa: E402
from backdrop.pipeline import GenerationRequest, InferenceConfig, predict_noise  # noqa: E402

CATEGORIES = ["mug", "lamp", "watch", "sneaker"]


def matmul_ceiling(device: str) -> float:
    """Measured FLOP/s of a large matmul: the ceiling every share below is a fraction of."""
    cuda = device.startswith("cuda")
    n, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if cuda else 5
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def save_bare_base(size: str, path: str) -> None:
    """A diffusers folder with no ``cg/``: what an SD-inpainting download looks like."""
    components = build_sd15_inpainting_base() if size == "sd15" else build_tiny_base()
    for name, part in components.items():
        part.save_pretrained(os.path.join(path, name))


def requests(n: int, resolution: int, with_reference: bool, seed0: int = 0, first_seed: int | None = None):
    out = []
    for i in range(n):
        rng = np.random.default_rng(seed0 + i)
        image = Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8))
        mask = np.zeros((resolution, resolution), np.float32)
        mask[resolution // 4: 3 * resolution // 4, resolution // 3: 2 * resolution // 3] = 1
        out.append(GenerationRequest(image, mask, CATEGORIES[i % len(CATEGORIES)],
                                     reference=image if with_reference else None,
                                     seed=first_seed if (i == 0 and first_seed is not None) else seed0 + i))
    return out


def step_flops(gen, batch: int, with_reference: bool) -> float:
    """FLOPs of one guided denoising step for ``batch`` images (UNet + CG (+ PG), both CFG halves)."""
    from torch.utils.flop_counter import FlopCounterMode

    pipe = gen.pipe
    reqs = requests(batch, gen.model.config.resolution, with_reference)
    guided = pipe.guided(pipe.prepare(reqs))
    h, w = guided.product_mask.shape[-2:]
    x = torch.randn(2 * batch, 4, h, w, device=gen.model.device, dtype=gen.model.dtype)
    t = torch.full((2 * batch,), 500, device=gen.model.device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        predict_noise(gen.model, x, t, guided)
    return float(counter.get_total_flops())


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB -> GiB)


def time_generation(gen, batch: int, with_reference: bool, config: InferenceConfig, device: str) -> dict:
    reqs = requests(batch, gen.model.config.resolution, with_reference)
    gen.pipe(reqs[:1], InferenceConfig(num_inference_steps=2, scheduler=config.scheduler))  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t = time.perf_counter()
    results = runtime.generate_measured(gen, reqs, config)
    sync(device)
    seconds = time.perf_counter() - t
    identical = all(np.array_equal(np.asarray(r.image)[q.mask > 0.5], np.asarray(q.image)[q.mask > 0.5])
                    for r, q in zip(results, reqs))
    return {"s_per_image": seconds / batch, "img_per_s": batch / seconds, "peak_gib": peak_memory_gib(device),
            "device_seconds_per_image": sum(r.device_seconds for r in results) / batch,
            "product_bit_identical": identical}


def batch_invariance(gen, config: InferenceConfig) -> int:
    """Differing pixel values between a row alone and the same row among other rows (CG+PG on
    half of them), with the generator's own bucket; 0 is the promise."""
    res, b = gen.model.config.resolution, gen.pipe.batch_bucket
    alone = requests(1, res, True, seed0=1000)
    mates = requests(max(2, b), res, False, seed0=2000)
    for k, r in enumerate(mates):
        if k % 2:
            r.reference = r.image
    mixed = mates[:1] + alone + mates[2:]
    a = np.asarray(gen.pipe(alone, config)[0], np.int16)
    m = np.asarray(gen.pipe(mixed, config)[1], np.int16)
    return int((a != m).sum())


def training_steps(model_dir: str, device: str, batch: int, resolution: int) -> list[dict]:
    """One optimizer step per stage with StageTrainer, as the Ray worker builds it (bf16 on CUDA)."""
    from backdrop.models.generator import BackdropModel
    from backdrop.training.loop import StageConfig, StageTrainer

    model = BackdropModel.from_pretrained(model_dir, categories=None, device=device)
    model.categories = model.categories.extend(CATEGORIES)
    rng = torch.Generator().manual_seed(0)
    data = {"images": torch.rand(batch, 3, resolution, resolution, generator=rng),
            "masks": (torch.rand(batch, 1, resolution, resolution, generator=rng) > 0.6).float(),
            "categories": [CATEGORIES[i % len(CATEGORIES)] for i in range(batch)]}
    out = []
    for stage in ("cg", "pg"):
        trainer = StageTrainer(model, StageConfig(stage=stage, batch_size=batch,
                                                  mixed_precision="bf16" if device.startswith("cuda") else "no"))
        trainer.step([data])  # warm-up
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t = time.perf_counter()
        metrics = trainer.step([data])
        sync(device)
        seconds = time.perf_counter() - t
        out.append({"stage": stage, "batch": batch, "s_per_step": seconds, "samples_per_s": batch / seconds,
                    "peak_gib": peak_memory_gib(device), "loss": metrics["loss"],
                    "loss_finite": bool(np.isfinite(metrics["loss"]))})
        print(json.dumps(out[-1]), flush=True)
    return out


@dataclass
class GpuBenchmarkRecipe:
    """The GPU benchmark's sizes, batches and schedulers (flags, ``--config``, ``key=value``)."""

    size: str = knob("sd15", choices=("sd15", "tiny"))
    device: str = knob("cuda" if torch.cuda.is_available() else "cpu")
    batches: str = knob("1,8,32")
    compiled_batches: str = knob("1,8", "batches timed compiled (each bucket is a compile: about 2 min each at "
                                        "SD size)")
    modes: str = knob("eager,compiled")
    compile_backend: str = knob("inductor", "eager: trace only (the CPU smoke run)")
    steps: int = knob(50)
    fast_scheduler: str = knob("dpm++")
    fast_steps: int = knob(5, "the recommended fewer-step setting (README)")
    train_batch: int = knob(16, "0: skip the training steps")
    output: Optional[str] = knob(None, "JSON path (default benchmarks/results/gpu-<size>-<device>.json)")


def main(argv=None) -> int:
    args = config_files.parse_recipe(GpuBenchmarkRecipe, argv, description=__doc__)
    device = args.device
    batches = [int(b) for b in args.batches.split(",")]
    compiled_batches = [int(b) for b in args.compiled_batches.split(",")]
    modes = args.modes.split(",")
    started = time.perf_counter()
    report: dict = {"size": args.size, "device": device, "steps": args.steps, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                    "recipe": config_files.to_yaml(args)}

    report["matmul_ceiling_tflops"] = matmul_ceiling(device) / 1e12
    print(f"matmul ceiling {report['matmul_ceiling_tflops']:.1f} TFLOP/s", flush=True)

    with tempfile.TemporaryDirectory(prefix="backdrop-gpu-bench-") as tmp:
        base = os.path.join(tmp, "base")
        t = time.perf_counter()
        save_bare_base(args.size, base)
        report["build_save_s"] = time.perf_counter() - t
        config = InferenceConfig(num_inference_steps=args.steps)
        fast = InferenceConfig(num_inference_steps=args.fast_steps, scheduler=args.fast_scheduler)
        rows, flops = [], {}
        for mode in modes:
            t = time.perf_counter()
            gen = runtime.load(base, device, compile="off")
            gen.model.categories.extend(CATEGORIES)
            load_s, res = time.perf_counter() - t, gen.model.config.resolution
            if not flops:
                report["parameters_m"] = {k: sum(x.numel() for x in n.parameters()) / 1e6
                                          for k, n in gen.model.networks().items()}
                flops = {"cg": step_flops(gen, 1, False), "cg+pg": step_flops(gen, 1, True)}
                report["tflop_per_image"] = {k: v * args.steps / 1e12 for k, v in flops.items()}
                print("TFLOP per image:", report["tflop_per_image"], flush=True)
            mode_batches = batches if mode == "eager" else compiled_batches
            for batch in mode_batches:
                gen.pipe.batch_bucket = batch  # the loop's fixed shape: one compile per bucket
                compile_s = 0.0
                if mode == "compiled":
                    runtime.warm_up(gen, [(res, res)], backend=args.compile_backend)
                    compile_s = gen.warmup_s
                for label, with_ref in (("cg", False), ("cg+pg", True)):
                    timed = time_generation(gen, batch, with_ref, config, device)
                    share = flops[label] * args.steps / timed["s_per_image"] / (report["matmul_ceiling_tflops"] * 1e12)
                    row = {"mode": mode, "generator": label, "batch": batch, "scheduler": "ddim",
                           "steps": args.steps, **timed, "share_of_ceiling": share, "load_s": load_s,
                           "compile_s": compile_s}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                if batch == max(mode_batches):
                    timed = time_generation(gen, batch, True, fast, device)
                    rows.append({"mode": mode, "generator": "cg+pg", "batch": batch, "scheduler": fast.scheduler,
                                 "steps": fast.num_inference_steps, **timed, "load_s": load_s,
                                 "compile_s": compile_s,
                                 "share_of_ceiling": flops["cg+pg"] * fast.num_inference_steps
                                 / timed["s_per_image"] / (report["matmul_ceiling_tflops"] * 1e12)})
                    print(json.dumps(rows[-1]), flush=True)
                    report.setdefault("batch_invariance", {})[mode] = {
                        "bucket": gen.pipe.batch_bucket,
                        "differing_values": batch_invariance(gen, InferenceConfig(num_inference_steps=min(args.steps, 10)))}
                    print("batch invariance", mode, report["batch_invariance"][mode], flush=True)
            del gen
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        report["generation"] = rows
        if args.train_batch:
            res = 512 if args.size == "sd15" else 64
            report["training"] = training_steps(base, device, args.train_batch, res)
    report["total_s"] = time.perf_counter() - started
    out = Path(args.output or ROOT / "benchmarks" / "results" / f"gpu-{args.size}-{device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    out.with_suffix(".md").write_text(table)
    print(table)
    return 0


def markdown(report: dict) -> str:
    lines = [f"# backdrop GPU benchmark: {report['size']} on {report['gpu'] or report['device']}", "",
             f"matmul ceiling {report['matmul_ceiling_tflops']:.1f} TFLOP/s; TFLOP per image "
             + ", ".join(f"{k} {v:.1f}" for k, v in report.get("tflop_per_image", {}).items())
             + f"; total {report['total_s']:.0f} s", "",
             "| mode | generator | batch | scheduler/steps | s/image | img/s | peak GiB | share of ceiling | product identical |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report.get("generation", []):
        lines.append(f"| {r['mode']} | {r['generator']} | {r['batch']} | {r['scheduler']}/{r['steps']} | "
                     f"{r['s_per_image']:.3f} | {r['img_per_s']:.2f} | {r['peak_gib']:.1f} | "
                     f"{100 * r['share_of_ceiling']:.1f} % | {r['product_bit_identical']} |")
    for mode, inv in report.get("batch_invariance", {}).items():
        lines.append(f"\nBatch invariance ({mode}, bucket {inv['bucket']}): {inv['differing_values']} differing values.")
    if report.get("training"):
        lines += ["", "| stage | batch | s/step | samples/s | peak GiB | loss finite |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {t['stage']} | {t['batch']} | {t['s_per_step']:.3f} | {t['samples_per_s']:.1f} | "
                  f"{t['peak_gib']:.1f} | {t['loss_finite']} |" for t in report["training"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
