"""serve_apps/config.yaml and infra/rayservice.yaml: valid Serve configs that agree."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_apps.app import AppArgs, build_app

ROOT = Path(__file__).resolve().parent.parent


def load_config() -> dict:
    return yaml.safe_load((ROOT / "serve_apps" / "config.yaml").read_text())


def load_rayservice() -> tuple[dict, dict]:
    manifest = yaml.safe_load((ROOT / "infra" / "rayservice.yaml").read_text())
    return manifest, yaml.safe_load(manifest["spec"]["serveConfigV2"])


def test_config_yaml_is_a_valid_serve_config_with_valid_args():
    config = load_config()
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.import_path == "serve_apps.app:build_app" and app.route_prefix == "/"
    args = AppArgs.model_validate(app.args)
    assert args.model_name == "backdrop" and args.default_alias == "champion"
    assert args.api_key_sha256 == [hashlib.sha256(b"backdrop-dev-key").hexdigest()]  # the documented dev key
    generator = next(d for d in app.deployments if d.name == "Generator")
    assert generator.max_ongoing_requests >= generator.user_config["max_batch_size"]
    assert generator.max_queued_requests > 0
    # one key may hold at most half the generator's slots (running + queued): others still get in
    slots = generator.max_ongoing_requests + generator.max_queued_requests
    assert args.max_concurrent_per_key and args.max_concurrent_per_key * 2 <= slots
    assert build_app(args) is not None  # the builder accepts them (no cluster: CPU replicas)


def test_rayservice_serves_the_same_application():
    manifest, serve_config = load_rayservice()
    assert manifest["kind"] == "RayService" and manifest["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    schema = ServeDeploySchema.model_validate(serve_config)
    (cluster_app,) = [a.model_dump(exclude_unset=True) for a in schema.applications]
    (local_app,) = [a.model_dump(exclude_unset=True) for a in ServeDeploySchema.model_validate(
        load_config()).applications]
    assert cluster_app["deployments"] == local_app["deployments"]
    for key in ("name", "route_prefix", "import_path", "runtime_env"):
        assert cluster_app[key] == local_app[key], key
    # only the key source (a Kubernetes secret) and the GPU request differ
    differ = {k for k in local_app["args"].keys() | cluster_app["args"].keys()
              if local_app["args"].get(k) != cluster_app["args"].get(k)}
    assert differ <= {"api_key_sha256", "num_gpus"}, differ
    AppArgs.model_validate(cluster_app["args"])


def test_test_hooks_need_the_test_environment_and_no_shipped_config_sets_them(monkeypatch, tmp_path):
    """Fault injection (backdrop.testhooks) cannot be switched on by production config alone."""
    from pathlib import Path

    from backdrop import testhooks

    monkeypatch.delenv(testhooks.ENV, raising=False)
    with pytest.raises(RuntimeError, match="BACKDROP_TEST_HOOKS=1"):
        testhooks.TestHold(str(tmp_path))
    with pytest.raises(RuntimeError, match="BACKDROP_TEST_HOOKS=1"):
        testhooks.training_hold(str(tmp_path / "hold"))
    repo = Path(__file__).resolve().parents[1]
    for shipped in [repo / "serve_apps" / "config.yaml", *sorted((repo / "infra").glob("*.yaml"))]:
        text = shipped.read_text()
        assert testhooks.ENV not in text and "hold_dir" not in text and "hold_file" not in text, shipped
