"""A real local Ray + Serve running the backdrop app, for the HTTP and browser tests.

Nothing is mocked: models are tiny untrained generators saved to disk or registered in a
temporary MLflow store (``BACKDROP_HOME``), Ray runs with 2 CPUs, the app is deployed with
``serve.run`` and spoken to over real HTTP on loopback.
"""

from __future__ import annotations

import io
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import requests
from loopback import free_port
from PIL import Image

API_KEY = "test-key-7f3a"
OTHER_KEY = "second-key-19c2"
CATEGORIES = ["mug", "lamp", "watch"]


# --- images -------------------------------------------------------------------------------
def png(image: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **save)
    return buf.getvalue()


def product_rgba(size: int = 64, seed: int = 0) -> Image.Image:
    """A product (a textured disc) on a transparent background: the alpha is the mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    alpha = np.where(inside, 255, 0).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def product_mask(size: int = 64) -> np.ndarray:
    return (np.asarray(product_rgba(size))[..., 3] >= 128)


def reference_rgb(size: int = 64) -> Image.Image:
    """A reference ad: a warm gradient background with a dark box where its product stands."""
    yy, xx = np.mgrid[:size, :size] / size
    rgb = np.stack([200 + 55 * xx, 120 + 80 * yy, 40 + 30 * xx * yy], -1).astype(np.uint8)
    rgb[size // 3: 2 * size // 3, size // 3: 2 * size // 3] = 30
    return Image.fromarray(rgb, "RGB")


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --- models -------------------------------------------------------------------------------
def tiny_model(seed: int = 0, family: str = "sd-inpainting"):
    import torch

    from backdrop.models.generator import BackdropModel

    torch.manual_seed(seed)
    model = BackdropModel.tiny(CATEGORIES, seed=seed, family_name=family)
    with torch.no_grad():  # untrained ControlNets start at zero: nudge them so they act
        for net in (model.cg, model.pg):
            for p in net.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return model


def register_version(seed: int, family: str = "sd-inpainting") -> str:
    """Register a tiny generator of ``family`` as a new version of ``backdrop`` (no alias)."""
    import mlflow

    from backdrop import pyfunc, registry

    with mlflow.start_run(experiment_id=registry.ensure_experiment(), run_name=f"tiny-{family}-{seed}"):
        return str(pyfunc.log_generator(tiny_model(seed, family), registered_model_name="backdrop").version)


def register_versions(n: int = 2) -> list[str]:
    """Register ``n`` tiny generators as versions of ``backdrop``; champion -> 1, challenger -> 2."""
    from mlflow.tracking import MlflowClient

    versions = [register_version(seed) for seed in range(n)]
    client = MlflowClient()
    client.set_registered_model_alias("backdrop", "champion", versions[0])
    if n > 1:
        client.set_registered_model_alias("backdrop", "challenger", versions[1])
    return versions


# --- Ray + Serve ----------------------------------------------------------------------------
@contextmanager
def local_serve(env: dict[str, str]):
    """A fresh local Ray (2 CPUs, never an already running cluster) + Serve on a free loopback port;
    yields the base URL and shuts both down."""
    import ray
    from ray import serve

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the raylet and so every replica inherits these
    port = free_port()
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env},
                 _metrics_export_port=free_port(), logging_level="WARNING")
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            yield f"http://127.0.0.1:{port}"
        finally:
            serve.shutdown()
            ray.shutdown()
    finally:
        for k, v in saved.items():  # later tests see the environment they had before
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def apps(*names: str):
    """Deletes the named Serve applications on the way out, so that a module leaves the shared
    stack as it found it: its route prefixes free and its replicas' CPUs back."""
    from ray.serve.context import _get_global_client

    try:
        yield
    finally:  # all at once (serve.delete takes one, and waits for its replicas to stop)
        _get_global_client().delete_apps(list(names), blocking=True)


def deploy(name: str, route_prefix: str, args: dict, generator: dict | None = None, url: str = "") -> str:
    """Deploy the backdrop app under ``route_prefix``; returns its base URL once it is ready.

    Without ``generator`` options the app comes from ``build_app`` exactly as ``serve run``
    builds it; with them, the generator deployment gets those options (queue sizes, batching).
    """
    from ray import serve

    from serve_apps.app import AppArgs, Backdrop, Generator, build_app

    args = AppArgs(**{"num_gpus": 0, **args})
    if generator is None:
        app = build_app(args)
    else:
        gen = Generator.options(ray_actor_options={"num_cpus": args.generator_num_cpus, "num_gpus": 0},
                                **generator).bind(device=args.device, torch_threads=args.torch_threads,
                                                  hold_dir=args.hold_dir)
        app = Backdrop.bind(gen, args.model_dump())
    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    base = url + (route_prefix if route_prefix != "/" else "")
    wait_ready(base)
    return base


def deploy_ingress(name: str, route_prefix: str, args: dict, generator_app: str, url: str = "") -> str:
    """Another ingress (its own settings, e.g. a shorter timeout) in front of the generator of the
    already deployed application ``generator_app``: both answer from the same replica."""
    from ray import serve

    from serve_apps.app import AppArgs, Backdrop

    handle = serve.get_deployment_handle("Generator", app_name=generator_app)
    serve.run(Backdrop.bind(handle, AppArgs(**{"num_gpus": 0, **args}).model_dump()), name=name,
              route_prefix=route_prefix, blocking=False)
    base = url + route_prefix
    wait_ready(base)
    return base


class Hold:
    """The test's side of ``backdrop.testhooks.TestHold``: while held (``with Hold(dir) as hold``),
    requests reach the generator (``arrived``) but no denoising loop starts until ``release()``.
    Every wait polls for a condition; its deadline only guards against a hang."""

    def __init__(self, directory: str | Path, deadline_s: float = 180.0) -> None:
        self.dir, self.deadline_s = Path(directory), deadline_s

    def __enter__(self) -> "Hold":
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("*.json"):
            old.unlink()
        (self.dir / "hold").touch()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        (self.dir / "hold").unlink(missing_ok=True)

    def markers(self, kind: str) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.dir.glob(f"{kind}-*.json"))]

    def wait_for(self, kind: str, count: int, check=None) -> list[dict]:
        """At least ``count`` markers of ``kind`` (arrived, entered, done), optionally until ``check(markers)``."""
        deadline = time.monotonic() + self.deadline_s
        while True:
            found = self.markers(kind)
            if len(found) >= count and (check is None or check(found)):
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} {kind} marker(s) expected in {self.dir}, found {found}")
            time.sleep(0.02)


def wait_until(condition, deadline_s: float = 180.0, what: str = "condition"):
    """Poll ``condition()`` until it returns something true; the deadline only guards against a hang."""
    deadline = time.monotonic() + deadline_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {deadline_s:.0f} s")
        time.sleep(0.02)
    return value


def wait_ready(base: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{base}/readyz", timeout=30)
            if r.status_code == 200:
                return
            last = r.text
        except requests.RequestException as e:
            last = repr(e)
        time.sleep(0.5)
    raise RuntimeError(f"{base} not ready after {timeout_s:.0f} s: {last}")


def serve_log_files() -> list[Path]:
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    return sorted((session / "logs").rglob("*.log")) + sorted((session / "logs").rglob("*.out")) + \
        sorted((session / "logs").rglob("*.err"))
