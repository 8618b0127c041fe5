"""The KubeRay manifests and the image definition parse and point at things that exist.

Nothing here talks to Kubernetes: every YAML document under infra/ (and the YAML embedded in
them: serveConfigV2, runtimeEnvYAML, the nightly RayJob template) is parsed, and every
entrypoint, script, Serve import path and Dockerfile COPY source is looked up in the repository.
Inside the image the repository is /app (infra/Dockerfile), so ``/app/x`` means ``<repo>/x``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
IMAGE_ROOT = "/app/"
REPO_PATH = re.compile(r"(?<![\w/.-])(?:/app/)?((?:jobs|serve_apps|platform|benchmarks|infra)/[\w./-]+\.(?:py|ya?ml))")


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(INFRA.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
                docs.extend((f"{path.name} (embedded)", d) for d in _embedded(doc))
    return docs


def _embedded(node) -> list[dict]:
    """YAML documents held as strings inside a manifest (ConfigMap data, serveConfigV2, ...)."""
    found = []
    if isinstance(node, dict):
        for value in node.values():
            found += _embedded(value)
    elif isinstance(node, list):
        for value in node:
            found += _embedded(value)
    elif isinstance(node, str) and "\n" in node:
        try:
            doc = yaml.safe_load(node)
        except yaml.YAMLError:
            return []
        if isinstance(doc, dict):
            found += [doc] + _embedded(doc)
    return found


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


DOCS = _documents()


def test_every_manifest_parses_and_the_set_is_complete():
    kinds = {doc.get("kind") for _, doc in DOCS}
    assert {"RayCluster", "RayJob", "RayService", "CronJob", "Deployment", "Service"} <= kinds
    for name, doc in DOCS:
        if "kind" in doc:
            assert doc.get("apiVersion"), f"{name}: {doc['kind']} without apiVersion"
            assert doc.get("metadata", {}).get("name") or doc.get("metadata", {}).get("generateName"), name


def test_the_ray_cluster_has_a_gpu_worker_group():
    cluster = next(doc for _, doc in DOCS if doc.get("kind") == "RayCluster")
    gpu_groups = [g for g in cluster["spec"]["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                         for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"


@pytest.mark.parametrize("name,job", [(n, d) for n, d in DOCS if d.get("kind") == "RayJob"],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_ray_jobs_run_a_script_that_exists(name, job):
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python", f"{name}: {argv[:2]}"
    script = argv[1].removeprefix(IMAGE_ROOT)
    assert (REPO / script).is_file(), f"{name}: entrypoint {argv[1]} is not in the repository"
    selector = job["spec"].get("clusterSelector", {}).get("ray.io/cluster")
    if selector:
        clusters = {d["metadata"]["name"] for _, d in DOCS if d.get("kind") == "RayCluster"}
        assert selector in clusters, f"{name}: selects RayCluster {selector!r}, not defined in infra/"
    _parse_with_the_jobs_own_parser(script, argv[2:])


def _parse_with_the_jobs_own_parser(script: str, args: list[str]) -> None:
    """The flags in the manifest are flags the job accepts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(script).stem, REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build_parser().parse_args(args)


def test_serve_import_paths_exist():
    apps = [app for _, doc in DOCS for app in doc.get("applications", []) if isinstance(app, dict)]
    assert apps, "no Serve application found in infra/"
    for app in apps:
        module, _, attr = app["import_path"].partition(":")
        source = REPO / (module.replace(".", "/") + ".py")
        assert source.is_file(), f"{app['import_path']}: no {source.relative_to(REPO)}"
        assert re.search(rf"^(def|class)\s+{attr}\b|^{attr}\s*=", source.read_text(), re.M), app["import_path"]


def test_every_repository_path_a_manifest_mentions_exists():
    mentioned = {m for _, doc in DOCS for s in _strings(doc) for m in REPO_PATH.findall(s)}
    for path in sorted(INFRA.glob("*.y*ml")):  # comments too (the how-to-run lines)
        mentioned |= set(REPO_PATH.findall(path.read_text()))
    assert mentioned, "expected the manifests to mention jobs/... scripts"
    missing = sorted(p for p in mentioned if not (REPO / p).exists())
    assert not missing, f"infra/ mentions paths that are not in the repository: {missing}"


def test_the_dockerfile_copies_what_exists_and_puts_the_repository_at_app():
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:2\.60\.0-py311-gpu", text, re.M)
    assert re.search(r"^WORKDIR /app$", text, re.M)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        sources = [a for a in shlex.split(line) if not a.startswith("--")][:-1]
        for src in sources:
            assert (REPO / src).exists(), f"infra/Dockerfile copies {src}, which is not in the repository"
    images = {c["image"] for _, doc in DOCS for c in _containers(doc)}
    assert "backdrop:0.1.0" in images


def _containers(node) -> list[dict]:
    if isinstance(node, dict):
        found = list(node.get("containers", [])) if isinstance(node.get("containers"), list) else []
        return found + [c for k, v in node.items() if k != "containers" for c in _containers(v)]
    if isinstance(node, list):
        return [c for v in node for c in _containers(v)]
    return []
