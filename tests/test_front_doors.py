"""Every front door passes every generation option (issue #23 item 7): one table, walked here.

The CLI's ``call`` (HTTP), ``generate`` (in process) and ``backfill`` (Ray), the two batch jobs,
the Python client and the HTTP body all take the same options; the end-to-end check over real
HTTP is ``test_serve.test_python_client_and_cli``."""

from __future__ import annotations

import importlib
import inspect
import sys

import pytest

from ray_head import REPO

OPTIONS = ("placements", "candidates", "scheduler", "steps", "guidance", "image_format")


def _flags(parser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings}


def _cli_commands() -> dict:
    from backdrop.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    return sub.choices


def _job_parser(name: str):
    sys.path.insert(0, str(REPO))
    try:
        return importlib.import_module(f"jobs.{name}").build_parser()
    finally:
        sys.path.remove(str(REPO))


@pytest.mark.parametrize("door", ["cli call", "cli generate", "cli backfill", "jobs/catalog_backfill.py",
                                  "jobs/nightly_regen.py"])
def test_every_command_line_door_takes_every_option(door):
    parser = _cli_commands()[door.split()[1]] if door.startswith("cli") else \
        _job_parser(door.removeprefix("jobs/").removesuffix(".py"))
    missing = [o for o in OPTIONS if "--" + o.replace("_", "-") not in _flags(parser)]
    assert not missing, f"{door} lacks {missing}"


def test_the_client_and_the_http_body_take_every_option():
    from backdrop.client import BackdropClient
    from backdrop.serving.params import GenerateParams

    # a brand style is per request over HTTP; a catalog names it per row (its brand_style column)
    options = {*OPTIONS, "style"}
    assert options <= set(inspect.signature(BackdropClient.generate).parameters)
    assert options <= set(GenerateParams.model_fields) and options <= set(GenerateParams.FIELDS)
    assert "--style" in _flags(_cli_commands()["call"])


def test_every_door_defaults_to_the_one_guidance():
    """The guidance a caller gets when it names none is ``limits.DEFAULT_GUIDANCE`` everywhere:
    the HTTP body, the backfill, the pipeline, the runtime, the evaluation and the try-it page."""
    from backdrop import runtime
    from backdrop.batch.config import BackfillConfig
    from backdrop.limits import DEFAULT_GUIDANCE
    from backdrop.pipeline import InferenceConfig
    from backdrop.quality.evaluation import EvalConfig
    from backdrop.serving.params import GenerateParams

    defaults = {
        "http": GenerateParams.model_fields["guidance"].default,
        "backfill": BackfillConfig("c", "m", "o").guidance,
        "pipeline": InferenceConfig().guidance_scale,
        "runtime": runtime.inference(20).guidance_scale,
        "evaluate": EvalConfig().guidance,
    }
    assert defaults == dict.fromkeys(defaults, DEFAULT_GUIDANCE)
    page = (REPO / "serve_apps" / "static" / "index.html").read_text()
    assert f'id="guidance" name="guidance" type="number" min="0" max="30" step="0.5" value="{DEFAULT_GUIDANCE:g}"' in page
