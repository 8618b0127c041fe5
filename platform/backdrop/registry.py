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
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import mlflow
from mlflow.tracking import MlflowClient

from . import settings, storage
from .errors import BackdropError, RegistryError, RegistryUnavailableError  # noqa: F401 - part of this module's API
from .settings import backdrop_home, embedded_tracking_uri, model_cache_bytes, tracking_uri

log = logging.getLogger(__name__)

GENERATOR_ARTIFACT = "generator"
DEFAULT_EXPERIMENT = "backdrop"
CHAMPION = "champion"


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


_VERSION = re.compile(r"0*([0-9]{1,18})")  # ASCII digits only; bounded, so int() never sees 4,300 digits


def normalize_version(version) -> str:
    """A registry version in its one canonical form (``0001`` -> ``1``).

    Every cache (downloads here, loaded models in the HTTP service) is keyed by the version
    string, so ``0001`` and ``1`` must not become two entries for the same model.
    """
    text = str(version)
    match = _VERSION.fullmatch(text)
    if not match:
        raise RegistryError(f"model version {text[:40]!r} is not a decimal version number")
    return match.group(1)


def parse_reference(ref: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, None, ALIAS); ``models:/NAME/3`` (or ``/0003``) -> (NAME, '3', None)."""
    body = ref[len("models:/"):]
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        if name and alias:
            return name, None, alias
    elif "/" in body:
        name, version = body.rsplit("/", 1)
        if name:
            try:
                return name, normalize_version(version), None
            except RegistryError as e:
                raise RegistryError(f"{ref[:200]!r}: {e}") from None
    raise RegistryError(f"{ref[:200]!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def resolve(ref: str) -> ResolvedModel:
    """Resolve a model reference to a loadable generator location and its lineage."""
    if not ref.startswith("models:/"):
        return ResolvedModel(ref, name=ref, version=storage.saved_generator_version(ref), path=ref)
    name, version = _registered_version(ref)
    return ResolvedModel(ref, name=name, version=version, path=download_version(name, version))


def _registered_version(ref: str) -> tuple[str, str]:
    """``(name, version)`` a ``models:/`` reference points at now (an alias is followed)."""
    configure()
    name, version, alias = parse_reference(ref)
    client = MlflowClient()
    mv = lookup(lambda: client.get_model_version_by_alias(name, alias) if alias else
                 client.get_model_version(name, version), f"cannot resolve {ref}")
    return name, str(mv.version)


# The registry's answers that mean "there is no such model, version or alias". Anything else
# (a network error, a 403, a 5xx) means the registry could not say, which is not absence.
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def lookup(call, what: str, missing_ok: bool = False):
    """``call()``; "not found" is a ``RegistryError`` (``None`` with ``missing_ok``), any other
    failure a :class:`RegistryUnavailableError`."""
    try:
        return call()
    except mlflow.exceptions.MlflowException as e:
        if e.error_code in NOT_FOUND:
            if missing_ok:
                return None
            raise RegistryError(f"{what}: {e.message}") from None
        raise RegistryUnavailableError(f"{what}: {e.error_code}: {e.message}") from None
    except Exception as e:  # noqa: BLE001 - connection errors, timeouts, ...
        raise RegistryUnavailableError(f"{what}: {type(e).__name__}: {e}") from None


def store_id() -> str:
    """A short id of the tracking store: local caches of registered versions are kept per store."""
    return hashlib.sha256(tracking_uri().encode()).hexdigest()[:10]


def cached_version(name: str, version: str, cache: str, complete: str) -> tuple[str, bool]:
    """``(directory, downloaded)``: registered version ``name``/``version``'s artifacts under
    ``BACKDROP_HOME/<cache>/<store>/<name>/<version>``, downloaded once per machine. A copy
    counts only once ``complete`` (a path inside it) exists; a download goes to a temporary
    directory renamed into place, so no half-download is ever found and concurrent downloaders
    race harmlessly."""
    dest = os.path.join(backdrop_home(), cache, store_id(), name, version)
    if os.path.exists(os.path.join(dest, complete)):
        return dest, False
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest, True


def download_version(name: str, version: str) -> str:
    """Local copy of a registered version's generator, cached per (store, name, version).

    The cache is bounded (``settings.model_cache_bytes``): every use marks a version's access
    time, and after a download the least recently used other versions are deleted until the
    cache fits (a process that already loaded one keeps its weights in memory)."""
    generator = os.path.join("artifacts", GENERATOR_ARTIFACT)
    dest, downloaded = cached_version(name, normalize_version(version), "model-cache",
                                      os.path.join(generator, "backdrop.json"))
    _mark_used(dest)
    if downloaded:
        evict_model_cache(keep=dest)
    return os.path.join(dest, generator)


def _mark_used(path: str) -> None:
    """Access time = last use (the modification time, and so the cache's contents, unchanged)."""
    os.utime(path, (time.time(), os.stat(path).st_mtime))


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def evict_model_cache(keep: str | None = None, limit: int | None = None) -> list[str]:
    """Delete the least recently used cached versions until the cache is at most ``limit``
    bytes (default ``settings.model_cache_bytes()``), never ``keep``; returns what was deleted."""
    import glob

    limit = model_cache_bytes() if limit is None else limit
    root = os.path.join(backdrop_home(), "model-cache")
    versions = [p for p in glob.glob(os.path.join(root, "*", "*", "*")) if os.path.isdir(p) and ".tmp-" not in p]
    sizes = {p: _tree_bytes(p) for p in versions}
    total, deleted = sum(sizes.values()), []
    for path in sorted(versions, key=lambda p: os.stat(p).st_atime):
        if total <= limit:
            break
        if keep is not None and os.path.samefile(path, keep):
            continue
        shutil.rmtree(path, ignore_errors=True)
        total -= sizes[path]
        deleted.append(path)
        log.info("model cache over %d bytes: deleted %s", limit, path)
    return deleted


def version_metrics(name: str, version: str) -> dict[str, float]:
    """Evaluation metrics recorded on a version as ``eval.<metric>`` tags (unreadable ones left out;
    the promotion gate reads its metric strictly with :func:`gate_metric`)."""
    configure()
    mv = MlflowClient().get_model_version(name, normalize_version(version))
    metrics = {}
    for k, v in (mv.tags or {}).items():
        if k.startswith("eval."):
            try:
                metrics[k[len("eval."):]] = float(v)
            except ValueError:
                pass
    return metrics


def record_metrics(name: str, version: str, metrics: dict[str, float]) -> None:
    configure()
    client = MlflowClient()
    for k, v in metrics.items():
        client.set_model_version_tag(name, normalize_version(version), f"eval.{k}", str(float(v)))


def gate_metric(name: str, version: str, metric: str, value: str | None) -> float | None:
    """A version's ``eval.<metric>`` tag as a finite number, None when there is none.

    ``inf`` would beat every champion and ``nan`` compares false with everything, so either
    would slip through the gate; a non-numeric tag is refused instead of crashing the job.
    """
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number):
        kind = "non-numeric" if number is None else "non-finite"
        raise RegistryError(f"{name} v{version} has a {kind} '{metric}' evaluation: eval.{metric}={str(value)[:80]!r}; "
                            f"re-run jobs/evaluate.py (or --force)")
    return number


def last_holder_tag(alias: str) -> str:
    """The registered-model tag where ``promote`` records who held ``alias`` last."""
    return f"backdrop.last_{alias}"


def _baseline(client: MlflowClient, name: str, alias: str, metric: str) -> tuple[str | None, float | None, str]:
    """(version, metric value, source) that a promotion to ``alias`` must not fall below.

    The live alias wins. When it is gone (deleting a version deletes its aliases) the holder
    recorded by the last ``promote`` in ``backdrop.last_<alias>`` stands in, so losing the
    champion never turns into "no baseline, anything passes".
    """
    current = lookup(lambda: client.get_model_version_by_alias(name, alias), f"{name}@{alias}", missing_ok=True)
    if current is not None:
        version = str(current.version)
        return version, gate_metric(name, version, metric, (current.tags or {}).get(f"eval.{metric}")), "alias"
    model = lookup(lambda: client.get_registered_model(name), name, missing_ok=True)
    raw = (model.tags or {}).get(last_holder_tag(alias)) if model is not None else None
    if not raw:
        return None, None, "none"
    try:
        last = json.loads(raw)
        version = normalize_version(last["version"])
        value = last["metrics"].get(metric)
    except (ValueError, KeyError, TypeError, AttributeError, RegistryError):
        raise RegistryError(f"{name}: unreadable {last_holder_tag(alias)} tag {raw[:120]!r}; "
                            f"fix or delete it, or use --force") from None
    # the version may still exist (alias removed by hand): its tags are the truth
    held = lookup(lambda: client.get_model_version(name, version), f"{name} v{version}", missing_ok=True)
    if held is not None:
        value = (held.tags or {}).get(f"eval.{metric}", value)
    return version, gate_metric(name, version, metric, value), last_holder_tag(alias)


# Metrics where a smaller number is the better model; any other metric gates higher-is-better.
LOWER_IS_BETTER = frozenset({"product_leak", "copy_paste", "fid"})


# What a promotion must not make worse, by default: category consistency by colour and by pattern
# (quality.evaluation), each with its own tolerance.
GATE_METRICS = ("category_consistency", "pattern_consistency")


def _gate(client: MlflowClient, name: str, version: str, tags: dict, alias: str, metric: str,
          tolerance: float, allow_no_baseline: bool) -> tuple[dict, list[RegistryError], str | None, str]:
    """One metric's verdict: (its numbers, its refusals, the baseline version, the baseline's source)."""
    lower = metric in LOWER_IS_BETTER
    refusals: list[RegistryError] = []
    try:
        new = gate_metric(name, version, metric, tags.get(f"eval.{metric}"))
    except RegistryError as e:
        new = None
        refusals.append(e)
    try:
        old_version, old, source = _baseline(client, name, alias, metric)
    except RegistryError as e:
        old_version, old, source = None, None, "unreadable"
        refusals.append(e)
    if not refusals:
        if new is None:
            refusals.append(RegistryError(
                f"{name} v{version} has no '{metric}' evaluation; run jobs/evaluate.py or --force"))
        elif old_version is None and not allow_no_baseline:
            refusals.append(RegistryError(
                f"{name}@{alias} has no current or recorded holder to compare v{version} with; "
                f"promote a first version with --allow-first (or --force)"))
        elif old is None and old_version is not None and not allow_no_baseline:
            refusals.append(RegistryError(
                f"{name}@{alias}'s holder v{old_version} ({source}) has no '{metric}' evaluation to compare "
                f"with; evaluate it, or use --allow-first (or --force)"))
        elif old is not None and (new > old + tolerance if lower else new < old - tolerance):
            refusals.append(RegistryError(
                f"refusing to move {alias}: {name} v{version} {metric}={new:.4f} is worse than "
                f"v{old_version}'s {old:.4f} ({source}; {'lower' if lower else 'higher'} is better; "
                f"tolerance {tolerance:g}) (use --force to override)"))
    return {"new": new, "previous": old, "tolerance": tolerance}, refusals, old_version, source


def promote(name: str, version: str, *, alias: str = CHAMPION, metric: str | Sequence[str] = GATE_METRICS,
            force: bool = False, tolerance: float | Mapping[str, float] = 0.0,
            allow_no_baseline: bool = False) -> dict:
    """Point ``alias`` at ``version`` if none of its held-out ``metric`` s is worse than the baseline's.

    Each metric is gated on its own, with its own tolerance (``tolerance`` as a mapping; a
    number applies to all). The baseline is the alias's current holder or, when the alias was
    lost, the last holder recorded in the ``backdrop.last_<alias>`` registered-model tag
    (written here on every move). With no baseline at all (a first promotion) the move needs
    ``allow_no_baseline``. Metrics must be finite numbers. Returns a small report (``new`` and
    ``previous`` are the first metric's; ``gates`` has every metric's); raises
    ``RegistryError`` when the gate refuses (``force`` moves the alias regardless).
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    tolerances = {m: (tolerance.get(m, 0.0) if isinstance(tolerance, Mapping) else tolerance) for m in metrics}
    for m, t in tolerances.items():
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0):  # nan would make every comparison pass
            raise RegistryError(f"tolerance must be a finite number >= 0, not {t!r} (for {m})")
    configure()
    client = MlflowClient()
    version = normalize_version(version)
    mv = lookup(lambda: client.get_model_version(name, version), f"cannot promote {name} v{version}")
    gates, refusals, holders = {}, [], []
    for m in metrics:
        gates[m], refused, old_version, source = _gate(client, name, version, mv.tags or {}, alias, m,
                                                      tolerances[m], allow_no_baseline)
        refusals += refused
        if source != "unreadable":
            holders.append((old_version, source))
    old_version, source = holders[0] if holders else (None, "unreadable")
    if len(set(holders)) > 1 and not force:  # every metric must be gated against the same holder
        raise RegistryError(f"{name}@{alias} moved to v{holders[-1][0]} while v{version} was being gated "
                            f"against v{old_version}; promote again")
    if refusals and not force:
        raise refusals[0]
    first = gates[metrics[0]]
    report = {"name": name, "alias": alias, "version": version, "metric": metrics[0], "new": first["new"],
              "previous_version": old_version, "previous": first["previous"], "baseline": source, "forced": force,
              "gates": gates, "overridden": [str(e) for e in refusals]}
    # Compare-and-set, as far as MLflow allows (it has no conditional update): the alias must
    # still point where the gate read it, or another promotion won the race.
    now = lookup(lambda: client.get_model_version_by_alias(name, alias), f"{name}@{alias}", missing_ok=True)
    now_version = str(now.version) if now is not None else None
    if not force and now_version != (old_version if source == "alias" else None):
        raise RegistryError(f"{name}@{alias} moved to v{now_version} while v{version} was being gated "
                            f"against v{old_version}; promote again")
    client.set_registered_model_alias(name, alias, version)
    recorded = {m: g["new"] for m, g in gates.items() if g["new"] is not None}
    client.set_registered_model_tag(name, last_holder_tag(alias), json.dumps({"version": version, "metrics": recorded}))
    log.info("%s@%s -> v%s (%s; previously v%s)", name, alias, version,
             ", ".join(f"{m}: {g['new']} vs {g['previous']}" for m, g in gates.items()), old_version)
    return report


def log_dict_artifact(data: dict, name: str) -> None:
    mlflow.log_text(json.dumps(data, indent=2, sort_keys=True, default=str), name)


def log_evaluation(numbers: dict[str, float], figures: dict, report: dict | None = None) -> None:
    """An evaluation in the active MLflow run: its numbers as metrics, its figures (PIL images)
    as ``eval/<name>.png`` and its report as ``eval/report.json``."""
    mlflow.log_metrics(numbers)
    for name, figure in figures.items():
        mlflow.log_image(figure, f"eval/{name}.png")
    if report is not None:
        log_dict_artifact(report, "eval/report.json")


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
    model = lookup(lambda: client.get_registered_model(name), f"no registered model {name!r}")
    versions = client.search_model_versions(f"name = '{name}'")
    return {
        "name": name,
        "aliases": {a: str(v) for a, v in sorted((model.aliases or {}).items())},
        "versions": sorted((str(v.version) for v in versions), key=int, reverse=True),
    }
