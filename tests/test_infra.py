"""The KubeRay manifests and the image definition parse and point at things that exist.

Nothing here talks to Kubernetes: every YAML document under infra/ (and the YAML embedded in
them: serveConfigV2, runtimeEnvYAML, the nightly RayJob template) is parsed, and every
entrypoint, script, Serve import path and Dockerfile COPY source is looked up in the repository.
Inside the image the repository is /app (infra/Dockerfile), so ``/app/x`` means ``<repo>/x``.
"""

from __future__ import annotations

import os
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


# --------------------------------------------------------------------------- MLflow as shipped


def _manifest(kind: str, name: str, file: str | None = None) -> dict:
    found = [d for n, d in DOCS if d.get("kind") == kind and d.get("metadata", {}).get("name") == name
             and (file is None or n == file)]
    assert len(found) == 1, f"expected one {kind} {name!r} in infra/, found {len(found)}"
    return found[0]


def _container_env(container: dict, secrets: dict[tuple[str, str], str], mounts: dict[str, Path]) -> dict[str, str]:
    """The container's environment as the kubelet would build it: literal values, Secret keys
    from ``secrets``, and paths under a volume mount re-rooted at that volume's local stand-in."""
    env = {}
    for var in container.get("env", []):
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[(ref["name"], ref["key"])]
            continue
        value = var["value"]
        for mount, local in mounts.items():
            if value == mount or value.startswith(mount + "/"):
                value = str(local) + value[len(mount):]
                break
        env[var["name"]] = value
    return env


@pytest.mark.slow
def test_mlflow_server_as_shipped_answers_its_service_names_and_only_with_a_user(s3_server, s3_bucket, tmp_path):
    """Start ``mlflow server`` with infra/mlflow.yaml's own command, arguments, environment and
    auth configuration. What differs is only where it runs: loopback and a free port instead of
    0.0.0.0:5000, one worker, SQLite instead of Postgres, the S3 test server instead of MinIO.
    Then call it the way in-cluster clients do: with the Service's name in the Host header."""
    import secrets as tokens
    import signal
    import subprocess
    import sys
    import time

    import requests
    from loopback import answers_http, free_port

    deployment = _manifest("Deployment", "mlflow", "mlflow.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    auth_ini = _manifest("ConfigMap", "mlflow-auth", "mlflow.yaml")["data"]["basic_auth.ini"]

    port = free_port()
    overrides = {"--host": "127.0.0.1", "--port": str(port), "--workers": "1",
                 "--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                 "--artifacts-destination": f"{s3_bucket}/mlartifacts"}
    argv, seen = [], set()
    for arg in container["command"] + container["args"]:
        flag, eq, _ = arg.partition("=")
        if eq and flag in overrides:
            arg, _ = f"{flag}={overrides[flag]}", seen.add(flag)
        argv.append(arg)
    assert seen == set(overrides), f"infra/mlflow.yaml no longer passes {set(overrides) - seen}"
    assert argv[:2] == ["mlflow", "server"]
    argv[0] = str(Path(sys.executable).parent / "mlflow")

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {}
    for mount in container["volumeMounts"]:
        local = mounts[mount["mountPath"]] = tmp_path / mount["name"]
        local.mkdir()
        if "configMap" in volumes[mount["name"]]:
            cm = _manifest("ConfigMap", volumes[mount["name"]]["configMap"]["name"], "mlflow.yaml")
            for key, text in cm["data"].items():
                if key == "basic_auth.ini":  # the user store: SQLite instead of Postgres, the rest as shipped
                    assert text == auth_ini and re.search(r"^database_uri = postgresql://mlflow@", text, re.M)
                    text = re.sub(r"^database_uri = .*$", f"database_uri = sqlite:///{tmp_path / 'auth.db'}",
                                  text, flags=re.M)
                (local / key).write_text(text)
    secrets = {(ref["name"], ref["key"]): tokens.token_hex(16) for ref in
               (v["valueFrom"]["secretKeyRef"] for c in _containers(_manifest("Job", "mlflow-users")) + [container]
                for v in c.get("env", []) if "valueFrom" in v)}
    secrets[("backdrop-s3-mlflow", "access-key")] = secrets[("backdrop-s3-mlflow", "secret-key")] = "testing"
    env = dict(os.environ, **_container_env(container, secrets, mounts))
    env["MLFLOW_S3_ENDPOINT_URL"] = s3_server  # the S3 test server stands in for http://minio:9000
    env.pop("MLFLOW_TRACKING_URI", None)

    log = tmp_path / "mlflow-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    session = requests.Session()
    session.trust_env = False  # never through a proxy
    try:
        deadline = time.monotonic() + 180  # guards against a hang only
        while proc.poll() is None and time.monotonic() < deadline and not answers_http(base + "/health"):
            time.sleep(0.5)
        assert proc.poll() is None and answers_http(base + "/health"), log.read_text(errors="replace")[-3000:]

        admin = (secrets[("backdrop-mlflow-admin", "username")], secrets[("backdrop-mlflow-admin", "password")])
        api = base + "/api/2.0/mlflow/experiments/search?max_results=1"
        for host in ("mlflow:5000", "mlflow.backdrop.svc:5000", "mlflow.backdrop.svc.cluster.local:5000",
                     "localhost:5000"):
            assert session.get(base + "/health", headers={"Host": host}, timeout=30).status_code == 200, host
            anonymous = session.get(api, headers={"Host": host}, timeout=30)
            assert anonymous.status_code == 401, (host, anonymous.status_code, anonymous.text[:300])
            ok = session.get(api, headers={"Host": host}, auth=admin, timeout=30)
            assert ok.status_code == 200, (host, ok.status_code, ok.text[:300])
        wrong = session.get(api, auth=admin, timeout=30)  # Host: 127.0.0.1:<port>, not a listed name
        assert wrong.status_code == 403, wrong.text[:300]
        assert session.get(api, headers={"Host": "evil.example:5000"}, auth=admin, timeout=30).status_code == 403
        assert session.get(api, headers={"Host": "mlflow:5000"}, auth=(admin[0], "wrong"),
                           timeout=30).status_code == 401

        # The mlflow-users Job, run as shipped against http://mlflow:5000: its requests reach this
        # server through HTTP_PROXY, so they carry the in-cluster Host header unchanged.
        job = _manifest("Job", "mlflow-users")
        (users,) = _containers(job)
        job_env = dict(os.environ, **_container_env(users, secrets, {"/tmp": tmp_path}))
        job_env.update(HTTP_PROXY=base, http_proxy=base, NO_PROXY="", no_proxy="")
        assert users["command"][0] == "python"
        for _ in range(2):  # idempotent: the second run updates the passwords
            done = subprocess.run([sys.executable] + users["command"][1:] + users["args"], env=job_env, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stderr[-3000:]
        assert "updated MLflow user" in done.stdout

        jobs_user = (secrets[("backdrop-mlflow-jobs", "username")], secrets[("backdrop-mlflow-jobs", "password")])
        serve_user = (secrets[("backdrop-mlflow-serve", "username")], secrets[("backdrop-mlflow-serve", "password")])
        host = {"Host": "mlflow:5000"}
        created = session.post(base + "/api/2.0/mlflow/registered-models/create", json={"name": "backdrop"},
                               headers=host, auth=jobs_user, timeout=30)
        assert created.status_code == 200, created.text[:300]
        read = session.get(base + "/api/2.0/mlflow/registered-models/get?name=backdrop", headers=host,
                           auth=serve_user, timeout=30)
        assert read.status_code == 200, read.text[:300]  # default_permission READ
        moved = session.post(base + "/api/2.0/mlflow/registered-models/alias",
                             json={"name": "backdrop", "alias": "champion", "version": "1"},
                             headers=host, auth=serve_user, timeout=30)
        assert moved.status_code == 403, moved.text[:300]  # Serve cannot move champion
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived the parent
        except (ProcessLookupError, PermissionError):
            pass


# --------------------------------------------------------------------------- hardening and schemas

K8S_VERSION = "1.33.0"  # CronJob.timeZone is GA from 1.27; KubeRay 1.x supports current releases
KUBERAY_KINDS = {"RayCluster", "RayJob", "RayService"}
SECRET_NAMED = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEYS|ROOT_USER|USERNAME|CREDENTIAL")
TOP_LEVEL = [(n, d) for n, d in DOCS if "(embedded)" not in n]


def _kuberay_templates(doc: dict) -> list[tuple[str, dict]]:
    """The pod templates inside a KubeRay object (whose CRD schemas are not available offline)."""
    spec = doc.get("spec", {})
    found = []
    cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec") or (spec if doc["kind"] == "RayCluster" else None)
    if cluster:
        found.append(("head", cluster["headGroupSpec"]["template"]))
        found += [(f"worker {g['groupName']}", g["template"]) for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in spec:
        found.append(("submitter", spec["submitterPodTemplate"]))
    return found


def _pod_specs() -> list[tuple[str, dict]]:
    """Every pod spec in infra/, KubeRay templates and embedded RayJobs included."""
    pods = []
    for name, doc in DOCS:
        kind = doc.get("kind")
        label = f"{name} {kind} {doc.get('metadata', {}).get('name') or doc.get('metadata', {}).get('generateName')}"
        if kind in KUBERAY_KINDS:
            pods += [(f"{label} {part}", t["spec"]) for part, t in _kuberay_templates(doc)]
        elif kind in {"Deployment", "StatefulSet", "Job"}:
            pods.append((label, doc["spec"]["template"]["spec"]))
        elif kind == "CronJob":
            pods.append((label, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return pods


PODS = _pod_specs()


def _env(container: dict) -> dict[str, dict]:
    return {v["name"]: v for v in container.get("env", [])}


def test_every_pod_is_found():
    kinds = {label.split()[1] for label, _ in PODS}
    assert {"RayCluster", "RayJob", "RayService", "Deployment", "StatefulSet", "Job", "CronJob"} <= kinds
    assert len(PODS) == 13, [label for label, _ in PODS]  # a new pod kind must be added to _pod_specs


@pytest.mark.parametrize("label,pod", PODS, ids=[label for label, _ in PODS])
def test_every_container_is_hardened_and_bounded(label, pod):
    pod_sc = pod.get("securityContext", {})
    assert pod_sc.get("runAsNonRoot") is True, f"{label}: pod securityContext.runAsNonRoot"
    assert isinstance(pod_sc.get("runAsUser"), int) and pod_sc["runAsUser"] > 0, \
        f"{label}: a numeric non-root runAsUser (images name users, which runAsNonRoot cannot check)"
    assert pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, label
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), label
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    assert containers, label
    for c in containers:
        where = f"{label} container {c['name']}"
        sc = c.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc["capabilities"].get("add"), where
        assert sc.get("runAsNonRoot") is True and not sc.get("privileged"), where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        res = c.get("resources", {})
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(bound, {})), f"{where}: resources.{bound} cpu and memory"
        assert not any("hostPort" in p for p in c.get("ports", [])), where
        # a read-only root needs somewhere to write: /tmp is an emptyDir wherever HOME or caches point
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        if c.get("image", "").startswith("backdrop:"):
            assert "/tmp" in mounts, f"{where}: the backdrop image writes to /tmp (Ray sessions, BACKDROP_HOME)"


def test_the_kuberay_autoscaler_sidecar_is_hardened_and_authenticated():
    clusters = [(n, d["spec"].get("rayClusterConfig") or d["spec"]) for n, d in DOCS
                if d.get("kind") in {"RayCluster", "RayService"}]
    autoscaled = [(n, c) for n, c in clusters if c.get("enableInTreeAutoscaling")]
    assert autoscaled
    for name, cluster in autoscaled:
        options = cluster["autoscalerOptions"]
        assert options["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert options["securityContext"]["capabilities"]["drop"] == ["ALL"], name
        assert {"cpu", "memory"} <= set(options["resources"]["limits"]), name
        env = _env(options)
        assert env["RAY_AUTH_MODE"]["value"] == "token", name
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == RAY_TOKEN[kind_of(name)], name


# One Ray token per cluster: code running in an internet-facing Serve replica must not be able
# to submit jobs to the batch cluster (read-write S3, the MLflow user that moves aliases).
RAY_TOKEN = {"RayService": "backdrop-ray-token-serve", "RayCluster": "backdrop-ray-token",
             "RayJob": "backdrop-ray-token", "CronJob": "backdrop-ray-token"}


def kind_of(name: str) -> str:
    return next(d["kind"] for n, d in DOCS if n == name and d.get("kind") in RAY_TOKEN)


def test_the_serve_cluster_and_the_batch_cluster_have_different_ray_tokens():
    secrets = {d["metadata"]["name"]: d["stringData"] for n, d in DOCS
               if n == "secrets.example.yaml" and d.get("kind") == "Secret"}
    assert secrets["backdrop-ray-token"]["token"] != secrets["backdrop-ray-token-serve"]["token"]
    assert len(set(RAY_TOKEN.values())) == 2


def test_every_ray_node_and_submitter_uses_token_auth_from_the_secret():
    checked = 0
    for name, doc in DOCS:
        if doc.get("kind") not in KUBERAY_KINDS:
            continue
        for part, template in _kuberay_templates(doc):
            for c in template["spec"]["containers"]:
                env = _env(c)
                where = f"{name} {doc['kind']} {part} {c['name']}"
                assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", where
                ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
                assert (ref.get("name"), ref.get("key")) == (RAY_TOKEN[doc["kind"]], "token"), where
                checked += 1
        cluster = doc["spec"].get("rayClusterConfig") or (doc["spec"] if doc["kind"] == "RayCluster" else None)
        if cluster:
            assert cluster["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", name
    assert checked == 7  # 3 RayCluster groups, 2 RayService groups, 2 RayJob submitters


def test_no_service_leaves_the_cluster_and_no_console_is_exposed():
    services = [(n, d) for n, d in DOCS if d.get("kind") == "Service"]
    assert services
    for name, svc in services:
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{name}: {svc['metadata']['name']}"
        for port in svc["spec"]["ports"]:
            assert port["port"] != 9001 and "console" not in port.get("name", ""), f"{name}: {port}"
    minio = _manifest("Deployment", "minio")
    (container,) = minio["spec"]["template"]["spec"]["containers"]
    assert _env(container)["MINIO_BROWSER"]["value"] == "off"
    assert "--console-address" not in container.get("args", [])
    assert [p["containerPort"] for p in container["ports"]] == [9000]


def test_credentials_come_only_from_secrets():
    """Credentials live in Secrets alone: every credential-named variable reads a Secret key,
    no manifest value holds a user:password URL, and the only Secrets are the templates of
    infra/secrets.example.yaml, whose values are placeholders."""
    referenced = set()
    for name, doc in DOCS:
        for c in _containers(doc) + [doc.get("spec", {}).get("autoscalerOptions") or {}]:
            for var in c.get("env", []):
                if "valueFrom" in var:
                    ref = var["valueFrom"].get("secretKeyRef")
                    if ref:
                        referenced.add((ref["name"], ref["key"]))
                elif SECRET_NAMED.search(var["name"]):
                    pytest.fail(f"{name}: {var['name']} is a literal value, not a secretKeyRef")
        for s in _strings(doc):
            for userinfo in re.findall(r"://([^/\s@]+)@", s):
                assert userinfo.startswith("${") or ":" not in userinfo, f"{name}: credentials in a URL: {s[:120]}"
    secrets = [(n, d) for n, d in TOP_LEVEL if d.get("kind") == "Secret"]
    assert {n for n, _ in secrets} == {"secrets.example.yaml"}
    provided = set()
    for _, secret in secrets:
        assert "data" not in secret, "templates use stringData placeholders"
        for key, value in secret["stringData"].items():
            assert value.startswith("REPLACE_ME"), f"{secret['metadata']['name']}.{key} is not a placeholder"
            provided.add((secret["metadata"]["name"], key))
    assert referenced <= provided, f"Secret keys used but not templated: {sorted(referenced - provided)}"
    assert "backdrop-s3" not in {name for name, _ in referenced}, "the old shared root credentials are gone"


def test_each_consumer_has_its_own_object_store_credentials():
    def s3_secret(container):
        return _env(container).get("AWS_ACCESS_KEY_ID", {}).get("valueFrom", {}).get("secretKeyRef", {}).get("name")

    users = {}
    for label, pod in PODS:
        for c in pod["containers"]:
            if s3_secret(c):
                users.setdefault(s3_secret(c), set()).add(label.split()[1])
    assert users == {"backdrop-s3-jobs": {"RayCluster"}, "backdrop-s3-serve": {"RayService"},
                     "backdrop-s3-mlflow": {"Deployment"}}, users
    root = {label for label, pod in PODS for c in pod["containers"]
            for v in c.get("env", []) if v.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "backdrop-s3-root"}
    assert root == {"minio.yaml Deployment minio", "minio.yaml Job minio-buckets"}, root


@pytest.mark.parametrize("name,doc", [(n, d) for n, d in TOP_LEVEL if d.get("kind") not in KUBERAY_KINDS],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_builtin_kinds_validate_strictly_against_the_kubernetes_schema(name, doc):
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("label,template", [(f"{n} {d['kind']} {part}", t) for n, d in DOCS
                                            if d.get("kind") in KUBERAY_KINDS for part, t in _kuberay_templates(d)],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_kuberay_pod_templates_validate_strictly_as_pod_templates(label, template):
    """The KubeRay CRD schemas are not packaged for offline use; the pod templates inside them
    are core PodTemplateSpecs, so they are validated as such (strict: no unknown fields)."""
    import kubernetes_validate

    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                  "template": template}, K8S_VERSION, strict=True)


def test_the_schema_check_can_fail():
    import kubernetes_validate

    pod = dict(_manifest("Deployment", "mlflow")["spec"]["template"])
    broken = {**pod, "spec": {**pod["spec"], "containers": [{**pod["spec"]["containers"][0], "securityContxt": {}}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                      "template": broken}, K8S_VERSION, strict=True)


def test_no_secret_travels_in_a_ray_runtime_env(monkeypatch):
    """Ray shows a runtime env on its dashboard and keeps it in job metadata: the environment a
    script forwards to its workers carries settings, never credentials (workers read those from
    their node's environment, as the manifests give it: secretKeyRef)."""
    from backdrop.settings import FORWARDED_ENV, forwarded_env

    secrets = {"MLFLOW_TRACKING_PASSWORD": "p", "MLFLOW_TRACKING_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s",
               "AWS_SESSION_TOKEN": "st", "RAY_AUTH_TOKEN": "r", "BACKDROP_API_KEYS": "k"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    env = forwarded_env()
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert not set(env) & set(secrets)
    assert not [n for n in FORWARDED_ENV if any(m in n for m in ("PASSWORD", "TOKEN", "SECRET", "CREDENTIAL", "KEY"))]
    assert not set(env.values()) & set(secrets.values())
