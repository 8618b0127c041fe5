"""Brand style kits: a brand's reference ads, stored once in the registry, used by name.

A brand sends a few reference ads once; afterwards a catalog row's ``brand_style`` or an HTTP
request's ``style`` names the kit instead of carrying a reference image. A kit is a
registered model ``brand-<NAME>`` in the MLflow registry: each version holds the references
(and their product masks) exactly as they were sent, validated when added; aliases move
between versions (``current`` follows every new version unless an add says otherwise).

A style names a kit as ``acme`` (its ``current`` version), ``acme@spring`` (an alias) or
``acme/3`` (a version). Per row or request one reference is picked by seed (:meth:`Kit.pick`)
and decoded by the very function an inline reference goes through
(``imaging.load_reference``), so a kit and the same references sent inline give the same
pixels; what a kit saves is the upload and the decode-side validation, cached per version.

Why images and not precomputed latents: PG reads the reference through the *serving* model's
VAE, which differs per generator version; a kit outlives model versions, so its latents would
be one model's. The reference is encoded per generation, as an inline one is.

A leaf adapter over the registry, like ``registry`` itself: no model code. MLflow is imported
on use, so parsing a style (the HTTP parameters) stays light.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from functools import lru_cache

from . import imaging, storage
from .errors import (BackdropError, FetchError, InvalidInputError, InvalidParameterError, RegistryError,
                     UnknownStyleError)
from .limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

KIT_PREFIX = "brand-"  # a kit's registered-model name: kept apart from generators
KIT_EXPERIMENT = "backdrop-brands"
CURRENT = "current"
KIT_FILE = "kit.json"
KIT_TAG = "backdrop.kind"
MAX_REFERENCES = 32
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_VERSION = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class StyleRef:
    """A parsed style: a kit name and at most one of a version or an alias (neither: ``current``)."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return self.name + (f"/{self.version}" if self.version else f"@{self.alias}" if self.alias else "")


def check_name(name) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidParameterError(f"a brand style name is 1-48 of a-z, 0-9, '-' and '_', starting with a letter "
                                    f"or digit; got {str(name)[:60]!r}")
    return name


def parse_style(text) -> StyleRef:
    """``acme`` | ``acme@ALIAS`` | ``acme/VERSION``; anything else is an ``InvalidParameterError``."""
    if not isinstance(text, str):
        raise InvalidParameterError(f"style must be a kit name like 'acme', got {type(text).__name__}")
    text = text.strip()
    if "@" in text:
        name, alias = text.split("@", 1)
        if not _ALIAS.fullmatch(alias):
            raise InvalidParameterError(f"style {text[:80]!r}: the alias after '@' is 1-64 of A-Z, a-z, 0-9, '-', '_'")
        return StyleRef(check_name(name), alias=alias)
    if "/" in text:
        name, version = text.split("/", 1)
        if not _VERSION.fullmatch(version):
            raise InvalidParameterError(f"style {text[:80]!r}: the version after '/' is a number")
        return StyleRef(check_name(name), version=str(int(version)))
    return StyleRef(check_name(text))


@dataclass(frozen=True)
class Kit:
    """One version of a brand's kit: its references as sent (validated when added)."""

    name: str
    version: str
    references: tuple[tuple[bytes, bytes | None], ...]  # (image, mask or None) bytes

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"

    def pick(self, seed: int) -> tuple[bytes, bytes | None]:
        """The reference a row or request with ``seed`` uses: deterministic, spread over the kit."""
        return self.references[int(seed) % len(self.references)]


def _registry():
    from . import registry  # MLflow: imported when a kit is touched, not when a style is parsed

    return registry


# --------------------------------------------------------------------------- adding and managing kits
def _read(uri: str, what: str, limits: Limits) -> bytes:
    try:
        return storage.read_bytes(uri, max_bytes=limits.max_image_bytes)
    except BackdropError as e:
        raise type(e)(f"{what} {uri}: {e.message}") from None
    except Exception as e:  # noqa: BLE001 - an unreadable URI of any kind: refused in words
        raise FetchError(f"{what} {uri}: {type(e).__name__}") from None


def validate_references(references: list[bytes], masks: list[bytes | None], limits: Limits = DEFAULT_LIMITS,
                        names: list[str] | None = None) -> None:
    """Every reference decodes within the limits and its mask (if any) fits it: the checks an
    inline reference gets, done once when the kit is added. Raises the first typed error, naming
    which reference it is."""
    for i, (image, mask) in enumerate(zip(references, masks)):
        try:
            imaging.load_reference(image, mask, max_pixels=limits.max_pixels, max_bytes=limits.max_image_bytes)
        except BackdropError as e:
            raise type(e)(f"reference {names[i] if names else i}: {e.message}") from None


def add_kit(name: str, references: list[str], masks: list[str] | None = None, *, alias: str = CURRENT,
            limits: Limits = DEFAULT_LIMITS) -> dict:
    """Validate ``references`` (and ``masks``, paired one to one) and store them as a new version
    of kit ``name``, ``alias`` pointing at it. Everything is read and checked before anything is
    written; a registry failure after that removes what it had written. Returns :func:`describe_kit`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    name = check_name(name)
    if not _ALIAS.fullmatch(alias or ""):
        raise InvalidParameterError(f"alias must be 1-64 of A-Z, a-z, 0-9, '-', '_'; got {str(alias)[:60]!r}")
    if not references or len(references) > MAX_REFERENCES:
        raise InvalidParameterError(f"a kit holds 1..{MAX_REFERENCES} references, got {len(references or [])}")
    if masks and len(masks) != len(references):
        raise InvalidParameterError(f"masks pair with references one to one: {len(references)} references, "
                                    f"{len(masks)} masks")
    images = [_read(u, "reference", limits) for u in references]
    mask_bytes = [_read(u, "mask", limits) for u in masks] if masks else [None] * len(images)
    validate_references(images, mask_bytes, limits, names=list(references))

    _registry().configure()
    client = MlflowClient()
    model_name = KIT_PREFIX + name
    entries = []
    with tempfile.TemporaryDirectory(prefix="backdrop-kit-") as tmp:
        for i, (image, mask) in enumerate(zip(images, mask_bytes)):
            entry = {"image": f"ref-{i:03d}", "sha256": hashlib.sha256(image).hexdigest(), "source": references[i]}
            _write(os.path.join(tmp, entry["image"]), image)
            if mask is not None:
                entry["mask"] = f"mask-{i:03d}"
                _write(os.path.join(tmp, entry["mask"]), mask)
            entries.append(entry)
        _write(os.path.join(tmp, KIT_FILE), json.dumps({"name": name, "references": entries}, indent=2).encode())
        run = mlflow.start_run(experiment_id=_registry().ensure_experiment(KIT_EXPERIMENT), run_name=f"brand-{name}")
        created = False
        try:
            with run:
                mlflow.log_artifacts(tmp, "kit")
                source = mlflow.get_artifact_uri("kit")
            if _registry().lookup(lambda: client.get_registered_model(model_name), model_name, missing_ok=True) is None:
                client.create_registered_model(model_name, tags={KIT_TAG: "brand-kit"})
                created = True
            mv = client.create_model_version(model_name, source, run_id=run.info.run_id,
                                             tags={"references": str(len(entries))})
            client.set_registered_model_alias(model_name, alias, mv.version)
        except BaseException:
            client.delete_run(run.info.run_id)  # no half-written kit: neither the run nor an empty name
            if created:
                client.delete_registered_model(model_name)
            raise
    log.info("brand kit %s: version %s (%d references), %s -> %s", name, mv.version, len(entries), alias, mv.version)
    return describe_kit(name)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def list_kits() -> list[dict]:
    """Every kit: name, versions (newest first) and aliases."""
    from mlflow.tracking import MlflowClient

    _registry().configure()
    models = MlflowClient().search_registered_models(filter_string=f"name LIKE '{KIT_PREFIX}%'")
    return [describe_kit(m.name[len(KIT_PREFIX):]) for m in sorted(models, key=lambda m: m.name)
            if (m.tags or {}).get(KIT_TAG) == "brand-kit"]


def describe_kit(name: str) -> dict:
    """A kit's versions (newest first, each with its reference count) and aliases."""
    from mlflow.tracking import MlflowClient

    name = check_name(name)
    _registry().configure()
    client = MlflowClient()
    model = _registry().lookup(lambda: client.get_registered_model(KIT_PREFIX + name), name, missing_ok=True)
    if model is None or (model.tags or {}).get(KIT_TAG) != "brand-kit":
        raise UnknownStyleError(f"no brand style {name!r}")
    versions = sorted(client.search_model_versions(f"name = '{KIT_PREFIX}{name}'"), key=lambda v: int(v.version),
                      reverse=True)
    return {"name": name, "aliases": {a: str(v) for a, v in sorted((model.aliases or {}).items())},
            "versions": [{"version": str(v.version), "references": int((v.tags or {}).get("references", 0)),
                          "created": v.creation_timestamp} for v in versions]}


def remove_kit(name: str, version: str | None = None) -> None:
    """Delete a kit (every version and alias) or one version of it."""
    from mlflow.tracking import MlflowClient

    describe_kit(name)  # unknown_style if there is none
    client = MlflowClient()
    if version is None:
        client.delete_registered_model(KIT_PREFIX + name)
    else:
        _registry().lookup(lambda: client.delete_model_version(KIT_PREFIX + name, str(int(version))),
                        f"{name} version {version}")


# --------------------------------------------------------------------------- using kits
def resolve_style(style: str | StyleRef) -> tuple[str, str]:
    """``(name, version)`` a style points at now (an alias followed); ``UnknownStyleError`` if
    the registry holds no such kit, version or alias."""
    from mlflow.tracking import MlflowClient

    ref = style if isinstance(style, StyleRef) else parse_style(style)
    _registry().configure()
    client = MlflowClient()
    model = KIT_PREFIX + ref.name
    try:
        if ref.version:
            mv = _registry().lookup(lambda: client.get_model_version(model, ref.version), str(ref))
        else:
            mv = _registry().lookup(lambda: client.get_model_version_by_alias(model, ref.alias or CURRENT), str(ref))
    except RegistryError as e:
        if e.code == "registry_unavailable":
            raise
        raise UnknownStyleError(f"no brand style {str(ref)!r}") from None
    return ref.name, str(mv.version)


def load_kit(name: str, version: str) -> Kit:
    """One kit version's references, downloaded once per machine (``BACKDROP_HOME/kit-cache``)
    and kept in memory per process (a few, least recently used dropped): a version never
    changes, so neither cache needs invalidating."""
    return _load_kit(_registry().store_id(), check_name(name), str(int(version)))


KITS_IN_MEMORY = 16


@lru_cache(maxsize=KITS_IN_MEMORY)
def _load_kit(store: str, name: str, version: str) -> Kit:
    registry = _registry()
    registry.configure()
    path, _ = registry.lookup(lambda: registry.cached_version(KIT_PREFIX + name, version, "kit-cache", KIT_FILE),
                              f"{name}/{version}")

    def read(entry: str | None) -> bytes | None:
        if not entry:
            return None
        with open(os.path.join(path, entry), "rb") as f:
            return f.read()

    with open(os.path.join(path, KIT_FILE)) as f:
        meta = json.load(f)
    return Kit(name, version, tuple((read(e["image"]), read(e.get("mask"))) for e in meta["references"]))


class StylePins:
    """Every style a run meets, resolved once to ``name/version`` (``pin``), so all its rows use
    the same kit version even if an alias moves mid-run; what cannot be resolved is kept as its
    error, which each of its rows then fails with. Picklable: the driver's pins travel to the
    load stage's workers."""

    def __init__(self) -> None:
        self.pinned: dict[str, str] = {}
        self.errors: dict[str, InvalidInputError] = {}  # unknown_style or invalid_parameter

    def pin(self, style: str) -> str:
        """``name/version`` of ``style``; raises its error (``unknown_style``, ``invalid_parameter``)."""
        if style not in self.pinned and style not in self.errors:
            try:
                self.pinned[style] = "/".join(resolve_style(style))
            except (UnknownStyleError, InvalidParameterError) as e:
                self.errors[style] = e
        if style in self.errors:
            error = self.errors[style]
            raise type(error)(error.message)  # a fresh one per row: a re-raised one keeps growing its traceback
        return self.pinned[style]

    def label(self, style: str) -> str:
        """What a fingerprint records of ``style``: its pin, or its error code (a row that fails
        now is redone when the kit appears)."""
        try:
            return self.pin(style)
        except (UnknownStyleError, InvalidParameterError) as e:
            return e.code

    def kit(self, style: str) -> Kit:
        name, version = self.pin(style).split("/")
        return load_kit(name, version)
