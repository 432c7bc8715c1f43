"""Static checks of the deployment artefacts under deploy/ (no Docker or cluster needed).

What a container engine or a cluster would only reveal at roll-out time is
checked here from the files: every YAML parses, images are pinned, the HTTP
port (9464) agrees between config, Dockerfile, compose, probes, Service and
scrape annotations, containers run as non-root, the compose and Kubernetes
start-up order creates topics first, and the shipped TOML is accepted by the
worker's own config loader.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
STATEFULSET = DEPLOY / "k8s-statefulset"
DOCKERFILE = DEPLOY / "Dockerfile"
EXAMPLE_TOML = DEPLOY / "riskgate.toml"

HTTP_PORT = 9464
CONFIG_PATH = "/etc/riskgate/riskgate.toml"
SPEC_SECTIONS = ("kafka", "topics", "defaults", "bots")
KNOWN_METRICS = {
    "riskgate_consumer_lag",
    "riskgate_deadletters_total",
    "riskgate_marks_ignored_total",
    "riskgate_halts_total",
    "riskgate_batch_seconds",
    "riskgate_commit_seconds",
    "riskgate_restore_seconds",
    "riskgate_loop_last_progress_timestamp_seconds",
    "riskgate_ready",
    "riskgate_symbols",
    "riskgate_reservations",
    "riskgate_started",
    "riskgate_commit_failures_total",
    "riskgate_input_offset_resets_total",
    "riskgate_stalled_input_partitions",
}

Obj = dict[str, Any]


# -- helpers -------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _k8s_objects(directory: Path = K8S) -> list[Obj]:
    objects: list[Obj] = []
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        objects.extend(_load_all(path))
    return objects


def _one(kind: str, directory: Path = K8S) -> Obj:
    found = [obj for obj in _k8s_objects(directory) if obj.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in {directory}, found {len(found)}"
    return found[0]


def _pod_specs() -> Iterator[tuple[str, Obj]]:
    for obj in [*_k8s_objects(), *_k8s_objects(STATEFULSET)]:
        if obj["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def _images(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from _images(value)
    elif isinstance(node, list):
        for item in node:
            yield from _images(item)


def _image_tag(ref: str) -> str | None:
    """The tag of an image reference (``None`` when it has none)."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def _assert_pinned(ref: str) -> None:
    tag = _image_tag(ref)
    assert tag, f"image {ref!r} has no explicit tag"
    assert tag != "latest", f"image {ref!r} uses :latest"
    assert "$" not in ref, f"image {ref!r} is not a literal reference"


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined."""
    logical: list[str] = []
    buffer = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    assert not buffer, "Dockerfile ends inside a line continuation"
    out = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, args in _dockerfile_instructions():
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args))
    return stages


def _container(pod_spec: Obj) -> Obj:
    containers: list[Obj] = pod_spec["containers"]
    assert len(containers) == 1, "one container per pod expected"
    return containers[0]


def _resolve_port(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"probe port {port!r} is not a declared container port"
    return int(named[port])


def _configmap_toml() -> Obj:
    data = _one("ConfigMap")["data"]
    assert "riskgate.toml" in data
    return tomllib.loads(data["riskgate.toml"])


def _compose() -> Obj:
    compose: Obj = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return compose


# -- YAML ----------------------------------------------------------------------


def test_expected_files_exist() -> None:
    for rel in (
        "Dockerfile",
        "riskgate.toml",
        "compose.yaml",
        "README.md",
        "k8s/kustomization.yaml",
        "k8s/deployment.yaml",
        "k8s/configmap.yaml",
        "k8s/secret.yaml",
        "k8s/pdb.yaml",
        "k8s/service.yaml",
        "k8s/job-topics.yaml",
    ):
        assert (DEPLOY / rel).is_file(), f"deploy/{rel} is missing"


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_parses(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in docs)


def test_kubernetes_objects_are_well_formed_and_namespace_agnostic() -> None:
    for obj in [*_k8s_objects(), *_k8s_objects(STATEFULSET)]:
        assert obj.get("apiVersion") and obj.get("kind"), obj
        assert obj["metadata"].get("name"), obj
        assert "namespace" not in obj["metadata"], f"{obj['kind']} pins a namespace"


@pytest.mark.parametrize("directory", [K8S, STATEFULSET], ids=["k8s", "k8s-statefulset"])
def test_kustomization_resources_exist(directory: Path) -> None:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (directory / resource).exists(), f"{resource} listed but missing"
    for image in kustomization.get("images", []):
        assert image.get("newTag") not in (None, "", "latest"), image


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert present == listed


# -- images ----------------------------------------------------------------------


def test_kubernetes_images_are_pinned() -> None:
    images = {ref for obj in [*_k8s_objects(), *_k8s_objects(STATEFULSET)] for ref in _images(obj)}
    assert images
    for ref in images:
        _assert_pinned(ref)
    # Deployment, StatefulSet and topics Job run the same image, as kustomize sets it.
    assert len(images) == 1, images
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (entry,) = kustomization["images"]
    (ref,) = images
    assert ref.split(":")[0] == entry["name"]
    assert _image_tag(ref) == str(entry["newTag"])


def test_compose_images_are_pinned() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        assert "image" in service, f"compose service {name} has no image reference"
        _assert_pinned(service["image"])


def test_dockerfile_base_images_are_pinned() -> None:
    stage_names: set[str] = set()
    froms = [args for instruction, args in _dockerfile_instructions() if instruction == "FROM"]
    assert len(froms) == 2, "expected a two-stage build (builder, runtime)"
    for args in froms:
        parts = [p for p in args.split() if not p.startswith("--")]
        ref = parts[0]
        if ref.lower() not in stage_names:
            _assert_pinned(ref)
            assert ref.startswith("python:3.11"), ref
        if len(parts) >= 3 and parts[1].lower() == "as":
            stage_names.add(parts[2].lower())


# -- Dockerfile ------------------------------------------------------------------


def test_dockerfile_runtime_stage() -> None:
    stages = _stages()
    runtime = stages[-1]
    instructions = dict(runtime)  # last of each kind wins, as in Docker

    user = instructions.get("USER", "")
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user!r} should be a numeric uid"
    assert int(uid) != 0, "final stage runs as root"

    exposed = {token.split("/")[0] for token in instructions.get("EXPOSE", "").split()}
    assert str(HTTP_PORT) in exposed

    health = instructions.get("HEALTHCHECK", "")
    assert "urllib" in health
    assert "/healthz" in health
    assert str(HTTP_PORT) in health

    assert instructions.get("ENTRYPOINT") == '["riskgate"]'
    assert instructions.get("CMD") == f'["run", "--config", "{CONFIG_PATH}"]'

    copies = [args for instruction, args in runtime if instruction == "COPY"]
    assert any("--from=builder" in args and "/opt/venv" in args for args in copies)
    run_lines = " ".join(args for instruction, args in runtime if instruction == "RUN")
    for tool in ("gcc", "build-essential", "pip install", "apt-get install"):
        assert tool not in run_lines, f"runtime stage installs {tool!r}"


def test_dockerfile_builder_uses_repo_sources() -> None:
    builder = _stages()[0]
    copied = " ".join(args for instruction, args in builder if instruction == "COPY")
    for source in ("pyproject.toml", "README.md", "worker"):
        assert source in copied, f"builder does not copy {source}"


def test_dockerignore_keeps_sources_in_context() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for needed in ("!pyproject.toml", "!README.md", "!worker/", "!deploy/riskgate.toml"):
        assert needed in ignore


# -- ports, probes, Service -----------------------------------------------------


def test_configured_http_port_is_9464() -> None:
    assert tomllib.loads(EXAMPLE_TOML.read_text())["http"]["port"] == HTTP_PORT
    assert _configmap_toml()["http"]["port"] == HTTP_PORT


def test_deployment_probes_service_and_scrape_agree() -> None:
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(pod)

    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("livenessProbe", "readinessProbe", "startupProbe")
        if kind in container
    }
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    if "startupProbe" in probes:
        assert probes["startupProbe"]["path"] == "/healthz"
    probe_ports = {_resolve_port(container, p["port"]) for p in probes.values()}
    assert probe_ports == {HTTP_PORT}

    service = _one("Service")
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["port"] == HTTP_PORT
    assert _resolve_port(container, svc_port.get("targetPort", svc_port["port"])) == HTTP_PORT
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(HTTP_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_deployment_settings() -> None:
    deployment = _one("Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = _container(pod)
    config = _configmap_toml()

    assert spec["replicas"] == 3
    assert spec["replicas"] <= config["topics"]["partitions"], "idle replicas"
    assert container["args"] == ["run", "--config", CONFIG_PATH]

    env = {e["name"]: e for e in container.get("env", [])}
    instance = env["RISKGATE_KAFKA__GROUP_INSTANCE_ID"]
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    # Finish a batch (bounded by max.poll.interval) and commit before SIGKILL.
    max_poll_s = config["kafka"].get("max_poll_interval_ms", 60_000) / 1000
    assert pod["terminationGracePeriodSeconds"] >= max_poll_s

    resources = container["resources"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[section]), section

    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert CONFIG_PATH.rsplit("/", 1)[0] in mounts


def test_no_service_links_and_no_token() -> None:
    # Service links inject RISKGATE_<SVC>_SERVICE_HOST etc. for Services named
    # riskgate-*; the RISKGATE_ prefix is the config override namespace.
    for name, pod in _pod_specs():
        assert pod.get("enableServiceLinks") is False, name
        assert pod.get("automountServiceAccountToken") is False, name


def test_containers_run_as_non_root() -> None:
    for name, pod in _pod_specs():
        pod_ctx = pod.get("securityContext", {})
        for container in pod["containers"]:
            ctx = {**pod_ctx, **container.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True, name
            assert ctx.get("runAsUser", 1) != 0, name
            assert ctx.get("readOnlyRootFilesystem") is True, name
            assert ctx.get("allowPrivilegeEscalation") is False, name
            assert "ALL" in ctx.get("capabilities", {}).get("drop", []), name


def test_pdb_covers_the_workers() -> None:
    pdb = _one("PodDisruptionBudget")["spec"]
    assert (pdb.get("maxUnavailable"), pdb.get("minAvailable")) == (1, None)
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()


def test_topics_job() -> None:
    job = _one("Job")
    pod = job["spec"]["template"]["spec"]
    container = _container(pod)
    assert container["args"] == ["topics", "--config", CONFIG_PATH]
    assert pod["restartPolicy"] in {"Never", "OnFailure"}
    # Not selected by the worker's Service or PDB.
    worker_selector = _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    assert not worker_selector.items() <= job_labels.items()


def test_secret_placeholders_match_config_files() -> None:
    secret = _one("Secret")
    data = secret.get("stringData", {})
    assert data
    for key, value in data.items():
        assert "REPLACE-ME" in value, f"secret key {key} is not a marked placeholder"

    pod = _one("Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("secret"))
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    mount = next(m for m in _container(pod)["volumeMounts"] if m["name"] == volume["name"])

    config = _configmap_toml()
    referenced = [
        config["kafka"].get(key)
        for key in ("sasl_password_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile")
    ] + [config["control"].get("secret_file")]
    for path in filter(None, referenced):
        directory, _, filename = path.rpartition("/")
        assert directory == mount["mountPath"], path
        assert filename in data, f"{path} is not a key of the Secret"


def test_statefulset_pod_template_matches_deployment() -> None:
    deployment = _one("Deployment")
    statefulset = _one("StatefulSet", STATEFULSET)
    assert statefulset["spec"]["template"] == deployment["spec"]["template"]
    assert statefulset["spec"]["selector"] == deployment["spec"]["selector"]
    assert statefulset["spec"]["replicas"] == deployment["spec"]["replicas"]
    assert statefulset["spec"]["serviceName"] == _one("Service")["metadata"]["name"]


# -- compose ---------------------------------------------------------------------


def test_compose_start_order_and_worker() -> None:
    services = _compose()["services"]
    kafka, topics, worker = services["kafka"], services["topics"], services["worker"]

    assert "KAFKA_PROCESS_ROLES" in kafka["environment"], "Kafka should run in KRaft mode"
    assert "healthcheck" in kafka

    assert topics["command"][:1] == ["topics"]
    assert topics["command"][1:] == ["--config", CONFIG_PATH]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"

    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert worker["build"]["context"] == ".."
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert any(str(port).endswith(f":{HTTP_PORT}") for port in worker["ports"])
    assert "/healthz" in " ".join(worker["healthcheck"]["test"])
    assert any(v.endswith(f":{CONFIG_PATH}:ro") for v in worker["volumes"])
    bootstrap = tomllib.loads(EXAMPLE_TOML.read_text())["kafka"]["bootstrap_servers"]
    assert bootstrap == "kafka:9092"


# -- TOML ------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["riskgate.toml", "configmap"])
def test_toml_has_spec_sections(source: str) -> None:
    data = (
        tomllib.loads(EXAMPLE_TOML.read_text()) if source == "riskgate.toml" else _configmap_toml()
    )
    for section in SPEC_SECTIONS:
        assert section in data, f"[{section}] missing"
    assert {"session", "breaker"} <= set(data["defaults"])
    assert sorted(data["bots"]) == ["alpha", "beta"]
    assert any("overrides" in bot for bot in data["bots"].values())
    assert all("portfolio" in bot for bot in data["bots"].values())
    assert data["log"]["format"] == "json"


def test_worker_config_accepts_deploy_files(tmp_path: Path) -> None:
    config_mod = pytest.importorskip("worker.config")
    example = config_mod.load_config(EXAMPLE_TOML, env={})
    assert example.http.port == HTTP_PORT
    assert example.kafka.bootstrap_servers == "kafka:9092"
    assert config_mod.HttpConfig().port == HTTP_PORT

    configmap = tmp_path / "riskgate.toml"
    configmap.write_text(_one("ConfigMap")["data"]["riskgate.toml"])
    k8s = config_mod.load_config(
        configmap, env={"RISKGATE_KAFKA__GROUP_INSTANCE_ID": "riskgate-7c9d8f6b5-x2k4q"}
    )
    assert k8s.http.port == HTTP_PORT
    assert k8s.kafka.group_instance_id == "riskgate-7c9d8f6b5-x2k4q"
    assert k8s.topics.partitions == example.topics.partitions
    assert k8s.bots.keys() == example.bots.keys()


# -- alert rules -----------------------------------------------------------------


def test_alert_rules_use_known_metrics() -> None:
    (rules_doc,) = _load_all(DEPLOY / "prometheus" / "riskgate-alerts.yaml")
    exprs = [rule["expr"] for group in rules_doc["groups"] for rule in group["rules"]]
    assert exprs
    used = set()
    for expr in exprs:
        for name in re.findall(r"\briskgate_[a-z_]+", str(expr)):
            used.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert used <= KNOWN_METRICS, used - KNOWN_METRICS
    assert used == KNOWN_METRICS, f"no alert for {KNOWN_METRICS - used}"


def test_alert_rules_name_metrics_the_worker_exports() -> None:
    """The alert file must not drift from worker/metrics.py."""
    from worker.metrics import Metrics

    exported = {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in ("", "_total", "_bucket", "_sum", "_count")
    }
    (rules_doc,) = _load_all(DEPLOY / "prometheus" / "riskgate-alerts.yaml")
    exprs = " ".join(str(r["expr"]) for g in rules_doc["groups"] for r in g["rules"])
    used = set(re.findall(r"\briskgate_[a-z_]+", exprs))
    assert used <= exported, used - exported


# -- what the shipped files say about the code ---------------------------------------


def _header_comment(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return " ".join(lines)


def test_deploy_env_override_comment_matches_the_code() -> None:
    """Issue 15 item 6: the comment said env values parse as TOML literals; they do not."""
    from worker.config import load_config

    comment = _header_comment(EXAMPLE_TOML)
    assert "TOML literals" not in comment
    assert "numeric-looking password stays a string" in comment
    assert "RISKGATE_BOTS__DeskBot__PORTFOLIO__MAX_DAILY_LOSS=-250" in comment
    cfg = load_config(
        EXAMPLE_TOML,
        env={
            "RISKGATE_KAFKA__SASL_PASSWORD": "123",
            "RISKGATE_BOTS__DeskBot__PORTFOLIO__MAX_DAILY_LOSS": "-250",
            "RISKGATE_BOTS__alpha__SYMBOLS": '["BTCUSDT"]',
        },
    )
    assert cfg.kafka.sasl_password == "123"
    assert cfg.bots["DeskBot"].portfolio.max_daily_loss == -250.0
    assert cfg.bots["alpha"].symbols == ["BTCUSDT"]


def test_compose_control_secret_variable_is_the_one_the_cli_reads() -> None:
    """Issue 15 item 5: compose told operators to export a variable the CLI never read."""
    from worker.operator import SECRET_ENV

    worker = _compose()["services"]["worker"]
    assert worker["environment"]["RISKGATE_CONTROL__SECRET"].startswith(f"${{{SECRET_ENV}:-")
    assert f"export {SECRET_ENV}" in (DEPLOY / "compose.yaml").read_text()


@pytest.mark.parametrize("source", ["riskgate.toml", "configmap"])
def test_shipped_kafka_request_timeout_exceeds_session_timeout(source: str) -> None:
    """Issue 15 item 12: 30 s sessions with 15 s requests never join (see
    tests/integration/test_shipped_configs.py for the join itself)."""
    data = (
        tomllib.loads(EXAMPLE_TOML.read_text()) if source == "riskgate.toml" else _configmap_toml()
    )
    kafka = data["kafka"]
    assert kafka["request_timeout_ms"] > kafka["session_timeout_ms"]


@pytest.mark.parametrize("source", ["riskgate.toml", "configmap"])
def test_shipped_configs_pass_the_start_time_timeout_checks(source: str, tmp_path: Path) -> None:
    from worker.config import load_config
    from worker.kafka.options import check_timeouts

    path = tmp_path / "riskgate.toml"
    text = EXAMPLE_TOML.read_text() if source == "riskgate.toml" else ""
    path.write_text(text or _one("ConfigMap")["data"]["riskgate.toml"])
    config = load_config(path, env={})
    check_timeouts(config.kafka, config.worker)  # raises ConfigError naming the keys


def _markdown_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize(
    "doc",
    [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_docs_link_nothing_outside_the_repo(doc: Path) -> None:
    """The README linked ../shared/SPEC.md, which no clone of the repo has."""
    links = [link.split("#")[0] for link in _markdown_links(doc)]
    local = [link for link in links if link and not re.match(r"[a-z]+:", link)]
    if doc.name == "README.md":
        assert "docs/spec.md" in local, "the README must link the spec (or the pattern broke)"
    for link in local:
        target = (doc.parent / link).resolve()
        assert target.is_relative_to(ROOT), f"{link} points outside the repository"
        assert target.exists(), f"{link} does not exist"
