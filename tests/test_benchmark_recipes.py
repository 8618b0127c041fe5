"""Every benchmark script takes its knobs one way (``config_files.parse_recipe``): a recipe
dataclass, a flag per field, ``--config FILE.yaml`` and ``key=value``; and every recipe under
``recipes/benchmarks/`` loads into the script its header names. Parsing only: no benchmark runs."""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re
import sys
import typing

import pytest

from backdrop import config_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(REPO, "benchmarks")
NO_FLAGS = {"batch_bucket_cost"}  # takes no flags at all
SCRIPTS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(BENCHMARKS, "*.py"))
                 if os.path.basename(p)[:-3] not in NO_FLAGS)
RECIPES = sorted(glob.glob(os.path.join(REPO, "recipes", "benchmarks", "*.yaml")))


def _script(name: str):
    """benchmarks/NAME.py as a module (benchmarks/ is not a package), imported once."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def _recipe_class(name: str) -> type:
    module = _script(name)
    (cls,) = [v for k, v in vars(module).items() if k.endswith("Recipe") and dataclasses.is_dataclass(v)
              and v.__module__ == module.__name__]
    return cls


def _parse(cls: type, *argv: str):
    return config_files.parse_recipe(cls, list(argv))


def test_no_benchmark_builds_its_own_parser():
    for name in SCRIPTS + sorted(NO_FLAGS):
        text = open(os.path.join(BENCHMARKS, f"{name}.py")).read()
        assert "ArgumentParser(" not in text, f"benchmarks/{name}.py: use config_files.parse_recipe"
        if name not in NO_FLAGS:
            assert "config_files.parse_recipe(" in text, f"benchmarks/{name}.py"


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_arguments_give_the_recipe_defaults(name):
    cls = _recipe_class(name)
    assert _parse(cls) == cls()


@pytest.mark.parametrize("name", SCRIPTS)
def test_key_value_beats_a_flag_beats_the_file_beats_the_default(name, tmp_path):
    cls = _recipe_class(name)
    hints = typing.get_type_hints(cls)
    values = {int: (7, 8, 9), float: (1.5, 2.5, 3.5), str: ("a", "b", "c")}
    f = next(f for f in dataclasses.fields(cls) if hints[f.name] in values and not f.metadata.get("choices"))
    in_file, in_flag, in_override = values[hints[f.name]]
    path = tmp_path / "recipe.yaml"
    path.write_text(f"{f.name}: {in_file}\n")
    flag = "--" + f.name.replace("_", "-")
    default = getattr(cls(), f.name)
    assert getattr(_parse(cls, "--config", str(path)), f.name) == in_file != default
    assert getattr(_parse(cls, "--config", str(path), flag, str(in_flag)), f.name) == in_flag
    got = _parse(cls, "--config", str(path), flag, str(in_flag), f"{f.name}={in_override}")
    assert getattr(got, f.name) == in_override
    assert dataclasses.replace(got, **{f.name: default}) == cls()  # the other fields keep their defaults


@pytest.mark.parametrize("name", SCRIPTS)
def test_an_unknown_key_exits_2(name, tmp_path, capsys):
    cls = _recipe_class(name)
    with pytest.raises(SystemExit) as e:
        _parse(cls, "no_such_knob=1")
    assert e.value.code == 2 and "no_such_knob" in capsys.readouterr().err
    path = tmp_path / "recipe.yaml"
    path.write_text("no_such_knob: 1\n")
    with pytest.raises(SystemExit) as e:
        _parse(cls, "--config", str(path))
    assert e.value.code == 2 and "no_such_knob" in capsys.readouterr().err


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_every_benchmark_recipe_loads_into_the_script_its_header_names(path):
    from omegaconf import OmegaConf

    text = open(path).read()
    rel = os.path.relpath(path, REPO)
    found = re.search(rf"python benchmarks/(\w+)\.py --config {re.escape(rel)}", text)
    assert found, f"{rel}: its header names no `python benchmarks/X.py --config {rel}`"
    recipe = _parse(_recipe_class(found.group(1)), "--config", path)
    for key, value in OmegaConf.to_container(OmegaConf.load(path)).items():
        assert getattr(recipe, key) == value, (rel, key)


def test_a_value_outside_a_fields_choices_exits_2_from_a_file_or_key_value_too(tmp_path, capsys):
    cls = _recipe_class("quality_bar")
    for argv in (["mode=sideways"], ["--config", str(tmp_path / "r.yaml")]):
        (tmp_path / "r.yaml").write_text("mode: sideways\n")
        with pytest.raises(SystemExit) as e:
            _parse(cls, *argv)
        assert e.value.code == 2 and "mode: 'sideways' is not one of scratch, adapt, table1" in capsys.readouterr().err
