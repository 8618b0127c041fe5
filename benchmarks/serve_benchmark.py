"""Load test of the backdrop HTTP service on this machine (loopback only; not a test).

    .venv/bin/python benchmarks/serve_benchmark.py            # ~4 min; writes benchmarks/results/serve.md

One local Ray (2 CPUs) + Serve runs two copies of the app side by side, identical except for
the generator's dynamic batching: ``batched`` (max_batch_size 8, the shipped config) and
``unbatched`` (max_batch_size 1). Every measurement alternates between them in the same run,
so the ratios compare like with like on a machine whose load we do not control:

1. throughput with 8 concurrent clients, batched vs unbatched (target: >= 1.5x);
2. p50 / p95 latency with 1 and with 8 concurrent clients;
3. overload: 64 concurrent clients that never back off, for a bounded time, against the
   batched app with its shipped queue limits; the service must stay up, shed load only with
   503 (+ Retry-After), answer no other 5xx, and answer normally afterwards.

The model is the tiny preset at its real resolution (64 px), untrained (the same compute as a
trained one), 20 DDIM steps at the default guidance, a product with alpha and a reference image.
"""

from __future__ import annotations

import io
import os
import platform as host_platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # serve_apps/, as `serve run` finds it from the repository root
sys.path.insert(0, str(ROOT / "platform"))

from backdrop import config_files  # noqa: E402
from backdrop.config_files import knob  # noqa: E402
from backdrop.limits import DEFAULT_GUIDANCE  # noqa: E402

API_KEY = "bench-key"
STEPS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def inputs() -> dict:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    alpha = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 16**2, 255, 0).astype(np.uint8)
    product = Image.fromarray(np.dstack([rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), alpha]), "RGBA")
    reference = Image.fromarray(np.stack([200 + 0 * xx, 120 + yy, 60 + xx], -1).astype(np.uint8), "RGB")
    return {"image": ("product.png", png(product), "image/png"), "reference": ("ref.png", png(reference), "image/png")}


# --- load generation -------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of 200 answers
    shed_latencies: list[float] = field(default_factory=list)  # of 503 answers
    drained_s: float = 0.0  # after the last request was sent, until the last answer came
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # connection errors, client timeouts
    batch_sizes: list[int] = field(default_factory=list)
    retry_after: set = field(default_factory=set)

    @property
    def ok(self) -> int:
        return self.statuses[200]

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


def load(url: str, name: str, clients: int, seconds: float, files: dict, pause_on_503: float = 0.0,
         timeout_s: float = 120.0) -> Run:
    """``clients`` threads, each sending requests back to back until ``seconds`` have passed."""
    run = Run(name, clients, seconds)
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        session = requests.Session()
        seed = 1000 * i
        start.wait()
        while time.monotonic() < stop_at[0]:
            seed += 1
            t = time.monotonic()
            try:
                r = session.post(f"{url}/v1/generate", files=files, headers={"X-API-Key": API_KEY},
                                 data={"category": "mug", "steps": str(STEPS), "seed": str(seed)}, timeout=timeout_s)
            except requests.RequestException as e:
                with lock:
                    run.errors[type(e).__name__] += 1
                continue
            dt = time.monotonic() - t
            with lock:
                run.statuses[r.status_code] += 1
                if r.status_code == 200:
                    run.latencies.append(dt)
                    run.batch_sizes.append(int(r.headers["X-Backdrop-Batch-Size"]))
                elif r.status_code == 503:
                    run.retry_after.add(r.headers.get("Retry-After"))
                    run.shed_latencies.append(dt)
            if r.status_code == 503 and pause_on_503:
                time.sleep(pause_on_503)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.monotonic() + seconds
    t0 = time.monotonic()
    start.wait()
    for t in threads:
        t.join()
    run.seconds = time.monotonic() - t0  # requests in flight at the deadline are counted in full
    run.drained_s = max(0.0, run.seconds - seconds)
    return run


# --- the service ------------------------------------------------------------------------------
def shipped_generator_options() -> dict:
    """The Generator deployment's options in serve_apps/config.yaml: what the benchmark runs."""
    import yaml

    config = yaml.safe_load((ROOT / "serve_apps" / "config.yaml").read_text())
    (app,) = config["applications"]
    return next(d for d in app["deployments"] if d["name"] == "Generator")


def start_service(model_dir: str) -> dict[str, str]:
    import ray
    from ray import serve

    from backdrop.serving.auth import ApiKeys
    from serve_apps.app import AppArgs, Backdrop, Generator

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    base = f"http://127.0.0.1:{port}"
    args = AppArgs(model_path=model_dir, api_key_sha256=[ApiKeys.digest(API_KEY)], num_gpus=0, torch_threads=1,
                   request_timeout_s=60)
    shipped = shipped_generator_options()
    urls = {}
    for name, batch in (("batched", shipped["user_config"]["max_batch_size"]), ("unbatched", 1)):
        generator = Generator.options(
            ray_actor_options={"num_cpus": 0.5, "num_gpus": 0},
            max_ongoing_requests=shipped["max_ongoing_requests"],
            max_queued_requests=shipped["max_queued_requests"],
            backpressure_config=shipped["backpressure_config"],
            user_config={**shipped["user_config"], "max_batch_size": batch},
        ).bind(device="cpu", torch_threads=1)
        serve.run(Backdrop.bind(generator, args.model_dump()), name=name, route_prefix=f"/{name}")
        urls[name] = f"{base}/{name}"
    for url in urls.values():
        deadline = time.monotonic() + 120
        while requests.get(f"{url}/readyz", timeout=30).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready")
            time.sleep(0.5)
    return urls


@dataclass
class ServeBenchmarkRecipe:
    """The Serve benchmark's durations and load (flags, ``--config``, ``key=value``)."""

    seconds: float = knob(20.0, "per throughput/latency measurement")
    rounds: int = knob(2, "alternating batched/unbatched rounds")
    overload_seconds: float = knob(30.0)
    overload_clients: int = knob(64)
    output: str = knob(str(ROOT / "benchmarks" / "results" / "serve.md"))


def main(argv=None) -> int:
    opts = config_files.parse_recipe(ServeBenchmarkRecipe, argv, description=__doc__)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from backdrop.models.generator import BackdropModel

    files = inputs()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="backdrop-bench-") as tmp:
        BackdropModel.tiny(["mug", "lamp", "watch", "shoe", "bag", "chair", "bottle", "plant"]).save_pretrained(tmp)
        urls = start_service(tmp)
        try:
            for url in urls.values():  # warm up: first loops, text-embedding cache, HTTP sessions
                load(url, "warmup", 8, 4.0, files)
            t8 = {"batched": [], "unbatched": []}
            t1 = {"batched": [], "unbatched": []}
            for r in range(opts.rounds):
                order = ("batched", "unbatched") if r % 2 == 0 else ("unbatched", "batched")
                for name in order:
                    t8[name].append(load(urls[name], name, 8, opts.seconds, files))
                    print(f"round {r + 1}: {name:9s} 8 clients {t8[name][-1].throughput:.2f} img/s", flush=True)
                for name in order:
                    t1[name].append(load(urls[name], name, 1, opts.seconds / 2, files))
                    print(f"round {r + 1}: {name:9s} 1 client  p50 {t1[name][-1].pct(50):.3f} s", flush=True)

            print(f"overload: {opts.overload_clients} clients for {opts.overload_seconds:.0f} s", flush=True)
            overload = load(urls["batched"], "overload", opts.overload_clients, opts.overload_seconds, files)
            alive = requests.get(f"{urls['batched']}/healthz", timeout=10).status_code
            time.sleep(2)
            after = load(urls["batched"], "after", 1, 5.0, files)
        finally:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()

    opts.load = (load_before, os.getloadavg())  # other processes on this machine skew absolute numbers
    report = render(t8, t1, overload, after, alive, opts)
    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.output).write_text(report)
    print(report)
    return 0


def merged(runs: list[Run]) -> Run:
    out = Run(runs[0].name, runs[0].clients, sum(r.seconds for r in runs))
    for r in runs:
        out.latencies += r.latencies
        out.statuses.update(r.statuses)
        out.errors.update(r.errors)
        out.batch_sizes += r.batch_sizes
    return out


def render(t8, t1, overload: Run, after: Run, alive: int, opts) -> str:
    import ray
    import torch

    b8, u8, b1, u1 = merged(t8["batched"]), merged(t8["unbatched"]), merged(t1["batched"]), merged(t1["unbatched"])
    ratios = [b.throughput / u.throughput for b, u in zip(t8["batched"], t8["unbatched"])]
    other_5xx = {s: n for s, n in overload.statuses.items() if s >= 500 and s != 503}
    other = {s: n for s, n in overload.statuses.items() if s not in (200, 503)}
    shed_ok = not other and not overload.errors and alive == 200 and after.ok > 0 and set(after.statuses) == {200}
    shipped = shipped_generator_options()
    lines = [
        "# backdrop HTTP service: load test",
        "",
        f"`benchmarks/serve_benchmark.py`, {time.strftime('%Y-%m-%d %H:%M %Z')}; "
        f"{os.cpu_count()} CPU cores ({host_platform.processor() or host_platform.machine()}), no GPU; "
        f"Ray {ray.__version__}, torch {torch.__version__}, 1 torch thread per generator replica. Loopback only. "
        f"Load average of the machine (other work included) {opts.load[0][0]:.1f} before, {opts.load[1][0]:.1f} after.",
        "",
        f"Model: tiny preset at 64 px, {STEPS} DDIM steps, guidance {DEFAULT_GUIDANCE:g}, product with alpha + reference image "
        "(CG + PG), one PNG per request. Two copies of the app run side by side on one local Ray (2 CPUs), "
        f"identical but for the generator's `max_batch_size` ({shipped['user_config']['max_batch_size']} vs 1; "
        f"`batch_wait_timeout_s` {shipped['user_config']['batch_wait_timeout_s']}, `max_ongoing_requests` "
        f"{shipped['max_ongoing_requests']}, `max_queued_requests` {shipped['max_queued_requests']}, all as in "
        f"serve_apps/config.yaml); measurements alternate between them ({opts.rounds} rounds of "
        f"{opts.seconds:.0f} s), so the ratio compares like with like.",
        "",
        "## Throughput and latency",
        "",
        "| app | clients | images/s | p50 latency | p95 latency | mean batch size |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in (b1, u1, b8, u8):
        lines.append(f"| {run.name} | {run.clients} | {run.throughput:.2f} | {run.pct(50):.2f} s | {run.pct(95):.2f} s | "
                     f"{statistics.mean(run.batch_sizes) if run.batch_sizes else float('nan'):.1f} |")
    lines += [
        "",
        f"**Batching at 8 clients: {b8.throughput / u8.throughput:.2f}x the throughput of max_batch_size=1** "
        f"(per round: {', '.join(f'{r:.2f}x' for r in ratios)}; target >= 1.5x).",
        "",
        "## Overload",
        "",
        f"{overload.clients} clients that never back off send requests for {opts.overload_seconds:.0f} s against the "
        f"batched app (the requests it had admitted by then took {overload.drained_s:.0f} s more to finish):",
        "",
        f"- answers: {dict(sorted(overload.statuses.items()))}; connection errors / client timeouts: "
        f"{dict(overload.errors) or 'none'}",
        f"- 503s carried `Retry-After: {', '.join(sorted(str(v) for v in overload.retry_after)) or '-'}` and came "
        f"fast (p50 {1000 * float(np.percentile(overload.shed_latencies or [np.nan], 50)):.0f} ms, "
        f"p95 {1000 * float(np.percentile(overload.shed_latencies or [np.nan], 95)):.0f} ms); other 5xx: "
        f"{other_5xx or 'none'}",
        f"- served {overload.ok} images ({overload.throughput:.2f}/s) meanwhile; an admitted request waited for "
        f"the queue ahead of it: p50 {overload.pct(50):.1f} s, p95 {overload.pct(95):.1f} s",
        f"- `/healthz` right after: {alive}; then 1 client for {after.seconds:.0f} s: "
        f"{dict(after.statuses)}, p50 {after.pct(50):.2f} s",
        "",
        f"**Result: {'the service stayed up, shed load with 503 only, and answered normally afterwards' if shed_ok else 'FAILED: see the numbers above'}.**",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
