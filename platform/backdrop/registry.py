"""MLflow tracking and the model registry: where every job gets its generator from.

A model reference is one of ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a path
(local or ``s3://``) to a saved generator. ``resolve`` turns any of them into a loadable
location plus the (name, version) that the manifest records as lineage.

Default store (one machine, nothing to run): SQLite + local artifacts under
``$BACKDROP_HOME/mlflow`` (``~/.backdrop`` by default), an absolute location so that jobs
launched from other working directories (``ray job submit --working-dir``) find the same
registry. ``MLFLOW_TRACKING_URI`` points everything at a real MLflow server instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass

import mlflow
from mlflow.tracking import MlflowClient

from . import settings, storage
from .errors import BackdropError
from .settings import backdrop_home, embedded_tracking_uri, tracking_uri

log = logging.getLogger(__name__)

GENERATOR_ARTIFACT = "generator"
DEFAULT_EXPERIMENT = "backdrop"
CHAMPION = "champion"


class RegistryError(BackdropError):
    """A model reference that cannot be resolved, or a refused promotion."""

    code = "unknown_model"


def configure() -> str:
    """Point the mlflow client at the configured store (idempotent); returns the URI."""
    uri = tracking_uri()
    if uri == embedded_tracking_uri():
        settings.exported_embedded.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str = DEFAULT_EXPERIMENT) -> str:
    """The experiment id; created with an absolute artifact root for the embedded store."""
    uri = configure()
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None  # a server chooses its own (proxied ``mlflow-artifacts:``) location
    if uri == embedded_tracking_uri():  # never the cwd-relative ./mlruns: jobs run in temp dirs
        location = "file://" + os.path.join(backdrop_home(), "mlflow", "artifacts")
    elif os.environ.get("BACKDROP_MLFLOW_ARTIFACT_ROOT"):
        location = os.environ["BACKDROP_MLFLOW_ARTIFACT_ROOT"]
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return mlflow.get_experiment_by_name(name).experiment_id


def log_model_dir(save, python_model, *, registered_model_name: str | None = None, tags: dict | None = None):
    """Log a model directory (written by ``save(path)``) in the active run as an MLflow pyfunc
    with ``python_model``; optionally register a version. Returns the new ``ModelVersion``
    (or None when not registering). The registry knows no model code: the caller brings both.
    """
    with tempfile.TemporaryDirectory(prefix="backdrop-log-") as tmp:
        path = os.path.join(tmp, GENERATOR_ARTIFACT)
        save(path)
        info = mlflow.pyfunc.log_model(
            name=GENERATOR_ARTIFACT,
            python_model=python_model,
            artifacts={GENERATOR_ARTIFACT: path},
            pip_requirements=["backdrop"],
        )
    if not registered_model_name:
        return None
    version = mlflow.register_model(info.model_uri, registered_model_name, tags=tags or {})
    log.info("registered %s version %s", registered_model_name, version.version)
    return version


@dataclass(frozen=True)
class ResolvedModel:
    reference: str  # what was asked for
    name: str
    version: str
    path: str  # a saved-generator directory (local) or s3:// prefix


def parse_reference(ref: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, None, ALIAS); ``models:/NAME/3`` -> (NAME, '3', None)."""
    body = ref[len("models:/"):]
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        return name, None, alias
    if "/" in body:
        name, version = body.rsplit("/", 1)
        return name, version, None
    raise RegistryError(f"{ref!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def resolve(ref: str) -> ResolvedModel:
    """Resolve a model reference to a loadable generator location and its lineage."""
    if not ref.startswith("models:/"):
        if not storage.exists(storage.join(ref, "backdrop.json")) and not storage.exists(storage.join(ref, "unet")):
            raise RegistryError(f"no saved generator at {ref}")
        return ResolvedModel(ref, name=ref, version=path_fingerprint(ref), path=ref)
    name, version = _registered_version(ref)
    return ResolvedModel(ref, name=name, version=version, path=download_version(name, version))


def _registered_version(ref: str) -> tuple[str, str]:
    """``(name, version)`` a ``models:/`` reference points at now (an alias is followed)."""
    configure()
    name, version, alias = parse_reference(ref)
    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as e:
        raise RegistryError(f"cannot resolve {ref}: {e.message}") from None
    return name, str(mv.version)


def download_version(name: str, version: str) -> str:
    """Local copy of a registered version's generator, cached per (store, name, version)."""
    store = hashlib.sha256(tracking_uri().encode()).hexdigest()[:10]
    dest = os.path.join(backdrop_home(), "model-cache", store, name, version)
    generator = os.path.join(dest, "artifacts", GENERATOR_ARTIFACT)
    if os.path.exists(os.path.join(generator, "backdrop.json")):
        return generator
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-downloads left in the cache
        raise
    try:
        os.rename(tmp, dest)  # atomic; concurrent downloaders race harmlessly
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return generator


def path_fingerprint(uri: str) -> str:
    """A version string for an unregistered path: a hash of its config and file sizes."""
    fs, path = storage.filesystem(uri)
    h = hashlib.sha256()
    for f in sorted(fs.find(path, detail=True).items()):
        h.update(f"{os.path.relpath(f[0], path)}:{f[1].get('size')}".encode())
    try:
        h.update(storage.read_bytes(storage.join(uri, "backdrop.json")))
    except BackdropError:
        pass
    return "path-" + h.hexdigest()[:12]


def version_metrics(name: str, version: str) -> dict[str, float]:
    """Evaluation metrics recorded on a version as ``eval.<metric>`` tags."""
    configure()
    mv = MlflowClient().get_model_version(name, version)
    return {k[len("eval."):]: float(v) for k, v in (mv.tags or {}).items() if k.startswith("eval.")}


def record_metrics(name: str, version: str, metrics: dict[str, float]) -> None:
    configure()
    client = MlflowClient()
    for k, v in metrics.items():
        client.set_model_version_tag(name, version, f"eval.{k}", str(float(v)))


def promote(name: str, version: str, *, alias: str = CHAMPION, metric: str = "category_consistency",
            force: bool = False, tolerance: float = 0.0) -> dict:
    """Point ``alias`` at ``version`` if its held-out ``metric`` is not worse than the current holder's.

    Returns a small report; raises ``RegistryError`` when the gate refuses (unless ``force``).
    """
    configure()
    client = MlflowClient()
    try:
        new = version_metrics(name, version).get(metric)
    except mlflow.exceptions.MlflowException as e:
        raise RegistryError(f"cannot promote {name} v{version}: {e.message}") from None
    if new is not None and math.isnan(new):
        new = None  # a failed evaluation is no evaluation: it must not slip through the gate
    try:
        current = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        current = None
    old = version_metrics(name, current.version).get(metric) if current else None
    report = {"name": name, "alias": alias, "version": str(version), "metric": metric, "new": new,
              "previous_version": str(current.version) if current else None, "previous": old, "forced": force}
    if not force:
        if new is None:
            raise RegistryError(f"{name} v{version} has no '{metric}' evaluation; run jobs/evaluate.py or --force")
        if old is not None and new < old - tolerance:
            raise RegistryError(
                f"refusing to move {alias}: {name} v{version} {metric}={new:.4f} is worse than "
                f"v{current.version}'s {old:.4f} (use --force to override)")
    client.set_registered_model_alias(name, alias, str(version))
    log.info("%s@%s -> v%s (%s: %s, previously %s)", name, alias, version, metric, new, old)
    return report


def log_dict_artifact(data: dict, name: str) -> None:
    mlflow.log_text(json.dumps(data, indent=2, sort_keys=True, default=str), name)


# --- lookups without a download (the HTTP service resolves aliases per request) -------------
def resolve_version(ref: str) -> tuple[str, str]:
    """``(name, version)`` that ``ref`` points at right now, without downloading anything.

    ``models:/NAME@ALIAS`` follows the alias at call time (so a moved ``champion`` is seen by
    the next call); a path gets its fingerprint as version, like :func:`resolve`.
    """
    if not ref.startswith("models:/"):
        resolved = resolve(ref)
        return resolved.name, resolved.version
    return _registered_version(ref)


def describe_registered(name: str) -> dict:
    """A registered model's aliases (alias -> version) and its versions, newest first."""
    configure()
    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as e:
        raise RegistryError(f"no registered model {name!r}: {e.message}") from None
    versions = client.search_model_versions(f"name = '{name}'")
    return {
        "name": name,
        "aliases": {a: str(v) for a, v in sorted((model.aliases or {}).items())},
        "versions": sorted((str(v.version) for v in versions), key=int, reverse=True),
    }
