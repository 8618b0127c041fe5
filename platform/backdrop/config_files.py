"""Configs as data: a dataclass, a YAML file of its fields, flags and ``key=value`` overrides.

Torchtune's shape, one mechanism for every job that has a config dataclass (training:
``training.recipe.TrainRecipe``; the backfill, ``backdrop generate`` and the nightly run:
``batch.config.BackfillConfig``; every ``benchmarks/`` script's recipe, through
:func:`parse_recipe`)::

    backdrop train --config recipes/adapt.yaml catalog=my/train.parquet steps.cg=3000
    python jobs/nightly_regen.py --config recipes/generate/nightly.yaml output=s3://b/out steps=20

Precedence, lowest first: the dataclass's defaults (the one place a default is declared), the
``--config`` file, the flags given (a flag that is not given stays out of the merge), then the
``key=value`` pairs (OmegaConf's dotlist). The resolved config is what an MLflow run logs
(:func:`to_yaml`), so a run says exactly how it was made and can be rerun from that file.

A leaf: it knows no job; OmegaConf is imported on use.
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, field, fields

CONFIG_DEST = "config"
OVERRIDES_DEST = "overrides"


def knob(default=MISSING, help: str = "", **extra):
    """A config field with its help (and ``choices``, ``aliases``, ``metavar``) for the flag
    :func:`add_arguments` makes of it; ``default`` may be a factory (``dict``, a lambda)."""
    kwargs = {"default_factory": default} if callable(default) else {} if default is MISSING else {"default": default}
    return field(metadata={"help": help, **extra}, **kwargs)


def _plain(hint):
    """``Optional[X]`` -> ``X``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "cfg.",
                  what: str = "a config file") -> None:
    """``--config``, one flag per field of the dataclass ``cls`` (``--batch-size`` for
    ``batch_size``: a bool is ``--x/--no-x``, a list ``A,B``, a dict ``K=V,...``), and trailing
    ``key=value`` overrides. No flag declares a default: one not given stays out of the merge
    (:func:`given`), so the dataclass's default is the only one."""
    add_config_arguments(parser, what)
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        hint = _plain(hints[f.name])
        meta = f.metadata
        names = ["--" + f.name.replace("_", "-"), *meta.get("aliases", ())]
        kw = dict(dest=prefix + f.name, default=argparse.SUPPRESS, help=meta.get("help", ""))
        origin = typing.get_origin(hint)
        if hint is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
        elif origin is dict:  # "cg=1500,pg=300": split in given(), typed by the schema in the merge
            parser.add_argument(*names, metavar=meta.get("metavar", "KEY=N,..."), **kw)
        elif origin in (list, tuple):
            parser.add_argument(*names, type=lambda text: [x.strip() for x in text.split(",") if x.strip()],
                                metavar=meta.get("metavar", "A,B"), **kw)
        else:
            parser.add_argument(*names, type=hint if hint in (int, float) else str, choices=meta.get("choices"),
                                metavar=None if meta.get("choices") else meta.get("metavar", f.name.upper()), **kw)


def _pairs(name: str, text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{name.replace('_', ' ')} {part!r}: expected KEY=VALUE, e.g. cg=10")
        out[key.strip()] = value.strip()
    return out


def add_config_arguments(parser: argparse.ArgumentParser, what: str = "a config file") -> None:
    """``--config FILE.yaml`` and trailing ``key=value`` overrides."""
    parser.add_argument("--config", dest=CONFIG_DEST, metavar="FILE.yaml",
                        help=f"{what} (recipes/*.yaml); flags and key=value override it")
    parser.add_argument(OVERRIDES_DEST, nargs="*", metavar="key=value",
                        help="overrides after the flags, e.g. steps=20 placements=[\"1:1\",\"4:5\"] (OmegaConf "
                             "dotlist; quote A:B values, which YAML reads as base-60 numbers)")


def load(cls: type, path: str | None = None, values: dict | None = None, overrides: list[str] | None = None,
         base: dict | None = None):
    """An instance of the dataclass ``cls`` from its defaults, ``base`` (a front door's own
    defaults), the YAML file at ``path``,
    ``values`` (given flags, already typed) and ``overrides`` (``key=value``). A ``ValueError``
    names what is wrong: an unknown key, a value of the wrong type, a missing field. The
    dataclass's own checks (``__post_init__``) raise what they raise."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    bad = [o for o in overrides or [] if "=" not in o]
    if bad:
        raise ValueError(f"expected key=value overrides, got {bad}")
    try:
        merged = OmegaConf.merge(_writable(OmegaConf.structured(cls)), OmegaConf.create(base or {}))
        if path:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        merged = OmegaConf.merge(merged, OmegaConf.create(values or {}), OmegaConf.from_dotlist(overrides or []))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ValueError(f"the config needs {' and '.join(missing)} (a flag, key=value, or the --config file)")
        return _check_choices(OmegaConf.to_object(merged))
    except OmegaConfBaseException as e:  # name the key: "batch_size: Value 'many' ... Integer"
        key = getattr(e, "full_key", None)
        raise ValueError(f"{key + ': ' if key else ''}{str(e).splitlines()[0]}") from None
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file") from None


def _check_choices(config):
    """A field's ``choices`` hold wherever its value came from (a flag checks its own; a file
    or a ``key=value`` pair would otherwise slip past)."""
    for f in fields(config):
        choices, value = f.metadata.get("choices"), getattr(config, f.name)
        if choices and value is not None and value not in choices:
            raise ValueError(f"{f.name}: {value!r} is not one of {', '.join(map(str, choices))}")
    return config


def _writable(node):
    """A frozen dataclass's schema (``BackfillConfig``, its ``Limits``) marks every node
    read-only; the merge writes into it, and the dataclass itself stays frozen."""
    from omegaconf import DictConfig, OmegaConf

    OmegaConf.set_readonly(node, False)
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _writable(child)
    return node


def given(args: argparse.Namespace, prefix: str = "", cls: type | None = None) -> dict:
    """The flags a command line gave (their parser's default is ``argparse.SUPPRESS``), by
    field name: ``dest`` is ``prefix + field``. With ``cls``, a ``K=V,...`` flag of a dict
    field becomes a dict here, so a bad one is a ``ValueError`` in words like any bad value."""
    out = {k.removeprefix(prefix): v for k, v in vars(args).items()
           if k.startswith(prefix) and k not in (CONFIG_DEST, OVERRIDES_DEST)}
    hints = typing.get_type_hints(cls) if cls is not None else {}
    return {k: _pairs(k, v) if isinstance(v, str) and typing.get_origin(_plain(hints.get(k))) is dict else v
            for k, v in out.items()}


def resolve(args: argparse.Namespace, cls: type, prefix: str = "cfg.", base: dict | None = None):
    """``cls`` from parsed arguments: ``base``, ``--config``, the flags given (``dest`` is
    ``prefix + field``), then the trailing ``key=value`` pairs."""
    return load(cls, getattr(args, CONFIG_DEST, None), given(args, prefix, cls),
                list(getattr(args, OVERRIDES_DEST, None) or []), base)


def parse_recipe(cls: type, argv: list[str] | None = None, description: str | None = None,
                 what: str = "a benchmark recipe"):
    """``cls`` from a command line: its flags (:func:`add_arguments`), ``--config`` and
    ``key=value``, resolved by :func:`resolve`; what is wrong (an unknown key, a bad value) is
    argparse's error, exit status 2. The whole front door of a script with a recipe dataclass
    (``benchmarks/*.py``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, cls, what=what)
    args = parser.parse_args(argv)
    try:
        return resolve(args, cls)
    except ValueError as e:
        parser.error(str(e))


def to_yaml(config) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(config))
