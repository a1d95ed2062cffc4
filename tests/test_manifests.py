"""The Kubernetes manifests (k8s/) and docker-compose.yml, checked offline: every YAML
file parses and passes yamllint; every overlay composes (tests/k8s_support.py applies
its patches, and matches `kubectl kustomize` where kubectl exists); every object
validates (kubernetes-validate, vendored CRDs); every hqm command line, HQM_* variable
and the ConfigMap's TOML are accepted by `hqm config check`, so the manifests cannot
drift from the CLI; ports, probes, grace periods, policies and autoscalers agree with
what hqm resolves."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from click.testing import CliRunner
from yamllint import linter
from yamllint.config import YamlLintConfig

import hqm
from hqm.cli.main import main
from hqm.config.commands import COMMANDS
from hqm.queue.keys import GROUP, QueueKeys
from tests.k8s_support import (
    K8S,
    ROOT,
    Container,
    build,
    containers,
    expand,
    find,
    kustomizations,
    load_documents,
    selects,
    validate,
)
from tests.redis_server import RedisServer, free_port, redis_server
from tests.support import HqmProcess, poll_result, request
from tests.test_dockerfile import FINAL, STAGES

__all__ = ["redis_server"]  # the fixture, imported for pytest

COMPOSE_FILE = ROOT / "docker-compose.yml"
YAML_FILES = [*sorted(K8S.rglob("*.yaml")), COMPOSE_FILE]
BUILDS = {d.relative_to(K8S).as_posix(): d for d in kustomizations()}
#: The Dockerfile stage each image name is built from (its ENTRYPOINT and ENV).
IMAGE_STAGES = {
    "openhqm": FINAL,
    "openhqm-init": next(s for s in STAGES if s.name == "iptables-init"),
}
#: Seconds past preStop + --drain-timeout a pod needs at least before SIGKILL: logs
#: flushed, Redis connections closed.
MIN_GRACE_MARGIN_S = 5
#: The uid/gid every hqm container runs as; only transparent mode's init container
#: runs as root.
HQM_UID = 1337
TRANSPARENT_CAPABILITIES = {"NET_ADMIN", "NET_RAW"}


def _exec_form(value: str) -> list[str]:
    return json.loads(value)


# --- YAML -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_yaml_parses_and_passes_yamllint(path: Path):
    assert load_documents(path), f"{path}: empty"
    config = YamlLintConfig(file=str(ROOT / ".yamllint"))
    problems = list(linter.run(path.read_text(), config, str(path)))
    assert not problems, "\n".join(f"{path}:{p.line}:{p.column} {p.message}" for p in problems)


def test_every_manifest_is_used_by_a_kustomization():
    used = set()
    for directory in BUILDS.values():
        spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
        used |= {(directory / r).resolve() for r in spec.get("resources", [])}
        used |= {(directory / p["path"]).resolve() for p in spec.get("patches", [])}
    files = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files - used == set()


# --- composition and schemas ------------------------------------------------------------


@pytest.mark.parametrize("name", BUILDS)
def test_every_object_validates(name: str):
    objects = build(BUILDS[name])
    assert objects
    for obj in objects:
        validate(obj)


@pytest.mark.parametrize("name", BUILDS)
def test_the_composition_is_what_kubectl_kustomize_builds(name: str):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the composition is checked by validation alone")
    done = subprocess.run(
        [kubectl, "kustomize", str(BUILDS[name])], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr

    def by_id(objects: list[dict]) -> dict:
        return {(o["apiVersion"], o["kind"], o["metadata"]["name"]): o for o in objects}

    theirs = by_id([o for o in yaml.safe_load_all(done.stdout) if o])
    assert by_id(build(BUILDS[name])) == theirs


def test_images_carry_hqms_version():
    for directory in BUILDS.values():
        spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
        for image in spec.get("images", []):
            assert image["newTag"] == hqm.__version__, directory
    for name, directory in BUILDS.items():
        for c in containers(build(directory)):
            if c.image_name in IMAGE_STAGES:
                assert c.spec["image"] == f"{c.image_name}:{hqm.__version__}", (name, c.id)


# --- hqm command lines --------------------------------------------------------------------


def _argv(c: Container, env: dict[str, str]) -> list[str]:
    """What the container runs: the image's ENTRYPOINT/CMD unless overridden."""
    stage = IMAGE_STAGES[c.image_name]
    entry = c.spec.get("command") or _exec_form(stage.values("ENTRYPOINT")[-1])
    if "args" in c.spec:
        args = c.spec["args"]
    else:
        args = [] if "command" in c.spec else _exec_form(stage.values("CMD")[-1])
    return [expand(word, env) for word in [*entry, *args]]


@dataclass(frozen=True, slots=True)
class Resolved:
    command: str
    args: tuple[str, ...]
    #: option name -> value as `hqm config check --json` shows it.
    settings: dict[str, Any]
    #: What the file given with --replay-key-file holds ("" without one).
    replay_key: str = ""

    def port(self, option: str) -> int:
        return int(str(self.settings[option]).rsplit(":", 1)[1])


#: The key k8s/base/replay-key.yaml ships: public, so hqm refuses it
#: (test_the_shipped_example_replay_key_is_refused).
EXAMPLE_KEY = yaml.safe_load((K8S / "base" / "replay-key.yaml").read_text())["stringData"]["key"]
#: What the operator puts there before deploying, as the README says.
OPERATOR_KEY = base64.b64encode(secrets.token_bytes(32)).decode()


def _mounted(c: Any) -> dict[str, str]:
    """The container's files, the example replay key replaced as the README says."""
    return {p: OPERATOR_KEY if v == EXAMPLE_KEY else v for p, v in c.files().items()}


def config_check(command: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """`hqm config check --json COMMAND ARGS` with exactly ``env`` for HQM_*."""
    clean = {k: None for k in os.environ if k.startswith(("HQM_", "OPENHQM_"))}
    argv = ["config", "check", "--json", command, *args]
    result = CliRunner().invoke(main, argv, env={**clean, **env})
    assert result.exit_code == 0, f"hqm {' '.join(argv)}\n{result.output}"
    return {s["option"]: s["value"] for s in json.loads(result.stdout)[command]}


@cache
def resolve(build_name: str, container_id: str) -> Resolved:
    """A container's hqm line resolved as hqm would, its files from its volumes."""
    c = next(c for c in containers(build(BUILDS[build_name])) if c.id == container_id)
    env = c.env(IMAGE_STAGES[c.image_name].env())
    argv = _argv(c, env)
    assert argv[0] == "hqm", f"{c.id}: runs {argv}"
    command, args = argv[1], argv[2:]
    assert command in COMMANDS, f"{c.id}: hqm {command} has no options table"
    table = COMMANDS[command]
    known = {n for o in table.options for n in table.env_names(o)}
    for name in (item["name"] for item in c.spec.get("env", [])):
        assert not name.startswith("HQM_") or name in known, f"{c.id}: {name} is no variable"
    with tempfile.TemporaryDirectory(prefix="hqm-pod-") as root:
        mapped = {}
        for path, content in _mounted(c).items():
            local = Path(root, path.lstrip("/"))
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(content)
            mapped[path] = str(local)
        for flag in ("--config", "--replay-key-file"):
            if flag in args:
                path = args[args.index(flag) + 1]
                assert path in mapped, f"{c.id}: {flag} {path} is in no mounted volume"
        local_args = [mapped.get(a, a) for a in args]
        settings = config_check(command, local_args, {k: mapped.get(v, v) for k, v in env.items()})
    key = (
        _mounted(c)[_flag(tuple(args), "--replay-key-file")] if "--replay-key-file" in args else ""
    )
    return Resolved(command, tuple(args), settings, key.strip())


def _hqm_containers() -> list[tuple[str, str]]:
    out = []
    for name, directory in BUILDS.items():
        for c in containers(build(directory)):
            if c.image_name in IMAGE_STAGES:
                out.append((name, c.id))
    return out


HQM_CONTAINERS = _hqm_containers()


@pytest.mark.parametrize(
    ("build_name", "container_id"), HQM_CONTAINERS, ids=[f"{b}:{c}" for b, c in HQM_CONTAINERS]
)
def test_hqm_config_check_accepts_the_container(build_name: str, container_id: str):
    """Its command line, environment and mounted files, as `hqm config check` reads them
    (resolve() fails on exit status 2, naming the line and hqm's error)."""
    resolved = resolve(build_name, container_id)
    assert resolved.settings


def _pod(build_name: str, owner_name: str) -> dict[str, tuple[Container, Resolved]]:
    """The hqm containers of one workload by the command they run."""
    out = {}
    for c in containers(build(BUILDS[build_name])):
        if c.owner["metadata"]["name"] == owner_name and c.image_name in IMAGE_STAGES:
            resolved = resolve(build_name, c.id)
            out[resolved.command] = (c, resolved)
    return out


def _probe_ports(c: Container) -> dict[str, int]:
    out = {}
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        if kind in c.spec:
            get = c.spec[kind]["httpGet"]
            out[f"{kind} {get['path']}"] = c.port(get["port"])
    return out


def _grace_needed(c: Container, drain_timeout: float) -> float:
    pre_stop = c.spec.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    return pre_stop + drain_timeout + MIN_GRACE_MARGIN_S


def _flag(args: tuple[str, ...], flag: str) -> str:
    return args[args.index(flag) + 1]


def _redirected(pod: dict[str, tuple[Container, Resolved]]) -> set[int]:
    """Ports the pod's `hqm iptables` init container hands to the proxy."""
    if "iptables" not in pod:
        return set()
    return {int(p) for p in _flag(pod["iptables"][1].args, "--ports").split(",")}


def _target_port(objects: list[dict], host: str, port: int) -> tuple[dict, int]:
    """The Deployment behind Service ``host`` and the container port ``port`` reaches."""
    service = find(objects, "Service", host)
    (entry,) = [p for p in service["spec"]["ports"] if p["port"] == port]
    (owner,) = [
        o
        for o in objects
        if o["kind"] == "Deployment"
        and all(
            o["spec"]["template"]["metadata"]["labels"].get(k) == v
            for k, v in service["spec"]["selector"].items()
        )
    ]
    c = next(c for c in containers(objects) if c.owner is owner)
    return owner, c.port(entry.get("targetPort", port))


@pytest.mark.parametrize(
    ("build_name", "container_id"), HQM_CONTAINERS, ids=[f"{b}:{c}" for b, c in HQM_CONTAINERS]
)
def test_hqm_container_fits_its_pod(build_name: str, container_id: str):
    """Ports, probes, upstreams and the grace period agree with what hqm resolves."""
    objects = build(BUILDS[build_name])
    c = next(c for c in containers(objects) if c.id == container_id)
    resolved = resolve(build_name, container_id)
    pod = _pod(build_name, c.owner["metadata"]["name"])
    grace = c.pod.get("terminationGracePeriodSeconds", 30)
    if resolved.command == "iptables":
        proxy = pod["proxy"][1]
        assert c.init and "--transparent" in proxy.args
        assert int(_flag(resolved.args, "--proxy-port")) == proxy.port("listen")
        assert int(_flag(resolved.args, "--admin-port")) == proxy.port("admin")
        app_ports = {
            p
            for o in containers(objects)
            if o.owner is c.owner and o.spec["name"] == "app"
            for p in o.ports()
        }
        assert _redirected(pod) == app_ports
        return
    admin = resolved.port("admin")
    assert admin in c.ports(), f"admin {admin} is no port of {c.id}"
    assert str(resolved.settings["admin"]).startswith("0.0.0.0:"), "probes cannot reach loopback"
    probes = _probe_ports(c)
    assert {"livenessProbe /healthz", "readinessProbe /readyz"} <= set(probes)
    assert set(probes.values()) == {admin}
    assert resolved.settings["redis"] not in (None, "none"), (
        "no Redis: the queue would not be durable"
    )
    assert grace >= _grace_needed(c, float(resolved.settings["drain-timeout"])), grace
    host, port = str(resolved.settings["upstream"]).removeprefix("http://").rsplit(":", 1)
    if resolved.command == "proxy":
        assert resolved.port("listen") in c.ports()
        assert host in ("localhost", "127.0.0.1")
        app_ports = {
            p
            for o in containers(objects)
            if o.owner is c.owner and o is not c and o.image_name not in IMAGE_STAGES
            for p in o.ports()
        }
        assert int(port) in app_ports, f"--upstream {host}:{port}: no app container listens there"
        return
    # A worker replays to the app pods' sidecars: the Service port it names reaches the
    # sidecar's listen port, or an app port the pod's nat rules redirect to it.
    owner, target = _target_port(objects, host, int(port))
    app_pod = _pod(build_name, owner["metadata"]["name"])
    sidecar = app_pod["proxy"][1]
    assert resolved.replay_key and resolved.replay_key == sidecar.replay_key, "replay key"
    assert target == sidecar.port("listen") or (
        target in _redirected(app_pod) and "--transparent" in sidecar.args
    ), f"{host}:{port} reaches port {target}, which bypasses the sidecar"


# --- one Redis URL, and the objects around the workers ------------------------------------


def _redis_url() -> str:
    return find(build(BUILDS["base"]), "Secret", "hqm-redis")["stringData"]["url"]


def test_the_redis_url_comes_from_one_place():
    secret = find(build(BUILDS["base"]), "Secret", "hqm-redis")["stringData"]
    url = urlsplit(secret["url"])
    assert secret["address"] == f"{url.hostname}:{url.port}", "KEDA's address is another server"
    for directory in BUILDS.values():
        for c in containers(build(directory)):
            if c.image_name != "openhqm":
                continue
            assert "--redis" not in c.spec.get("args", []), c.id
            (item,) = [e for e in c.spec["env"] if e["name"] == "HQM_REDIS"]
            assert item["valueFrom"]["secretKeyRef"] == {"name": "hqm-redis", "key": "url"}
    toml = tomllib.loads(find(build(BUILDS["base"]), "ConfigMap", "hqm-config")["data"]["hqm.toml"])
    assert "redis" not in json.dumps(toml), "the Redis URL also in hqm.toml"


def test_the_commented_example_route_is_valid(tmp_path: Path):
    """Uncommented, the ConfigMap's example upstream and route are accepted."""
    toml = find(build(BUILDS["base"]), "ConfigMap", "hqm-config")["data"]["hqm.toml"]
    example = re.sub(r"^# ((?:\[\[routes\]\]|[a-z_]+ = ).*)$", r"\1", toml, flags=re.M)
    assert example.count("[[routes]]") == 1 and example != toml
    (tmp_path / "hqm.toml").write_text(example)
    env = {"HQM_REDIS": _redis_url()}
    settings = config_check("proxy", ["--config", str(tmp_path / "hqm.toml")], env)
    assert settings["upstream"] == "localhost:8080"


def _worker_queue(build_name: str) -> str:
    (c,) = [
        c
        for c in containers(build(BUILDS[build_name]))
        if c.owner["metadata"]["name"] == "hqm-worker"
    ]
    settings = resolve(build_name, c.id).settings
    return str(settings["queue"])


def test_keda_scales_the_workers_on_their_stream():
    objects = build(BUILDS["overlays/keda"])
    scaled = find(objects, "ScaledObject", "hqm-worker")["spec"]
    worker = find(objects, "Deployment", scaled["scaleTargetRef"]["name"])
    assert "replicas" not in worker["spec"], "a fixed replica count fights KEDA"
    assert scaled["minReplicaCount"] == 0
    stream = QueueKeys(_worker_queue("overlays/keda")).stream
    database = urlsplit(_redis_url()).path.lstrip("/") or "0"
    kinds = set()
    for trigger in scaled["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "redis-streams"
        assert (meta["stream"], meta["consumerGroup"]) == (stream, GROUP)
        assert meta.get("databaseIndex", "0") == database
        auth = find(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        (ref,) = auth["spec"]["secretTargetRef"]
        assert ref["parameter"] == "address"
        assert find(objects, "Secret", ref["name"])["stringData"][ref["key"]]
        kinds |= {k for k in ("lagCount", "pendingEntriesCount") if k in meta}
        if "lagCount" in meta:
            assert meta["activationLagCount"] == "0", "scale from zero on the first request"
    assert kinds == {"lagCount", "pendingEntriesCount"}


def test_the_hpa_scales_the_workers_on_their_backlog_gauge():
    objects = build(BUILDS["overlays/hpa"])
    hpa = find(objects, "HorizontalPodAutoscaler", "hqm-worker")["spec"]
    worker = find(objects, hpa["scaleTargetRef"]["kind"], hpa["scaleTargetRef"]["name"])
    assert "replicas" not in worker["spec"], "a fixed replica count fights the HPA"
    (metric,) = hpa["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "hqm_queue_backlog"
    queue = metric["external"]["metric"]["selector"]["matchLabels"]["queue"]
    assert queue == _worker_queue("overlays/hpa")
    assert "prometheus-adapter" in (K8S / "overlays" / "hpa" / "hpa.yaml").read_text()


def test_the_service_monitor_finds_every_admin_listener():
    objects = build(BUILDS["base"])
    monitor = find(objects, "ServiceMonitor", "hqm")["spec"]
    (endpoint,) = monitor["endpoints"]
    services = [
        o
        for o in objects
        if o["kind"] == "Service" and selects(monitor["selector"], o["metadata"]["labels"])
    ]
    assert {s["metadata"]["name"] for s in services} == {"hqm-app", "hqm-worker"}
    for service in services:
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        owner, target = _target_port(objects, service["metadata"]["name"], port["port"])
        pod = _pod("base", owner["metadata"]["name"])
        command = "proxy" if "proxy" in pod else "worker"
        assert target == pod[command][1].port("admin")


def test_a_disruption_budget_covers_the_workers():
    objects = build(BUILDS["base"])
    labels = find(objects, "Deployment", "hqm-worker")["spec"]["template"]["metadata"]["labels"]
    budgets = [
        o
        for o in objects
        if o["kind"] == "PodDisruptionBudget" and selects(o["spec"]["selector"], labels)
    ]
    assert len(budgets) == 1 and budgets[0]["spec"]["maxUnavailable"] == 1


# --- security, network policies, overlays ---------------------------------------------------


@pytest.mark.parametrize("name", BUILDS)
def test_non_root_everywhere_but_the_iptables_init_container(name: str):
    objects = build(BUILDS[name])
    for owner in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet")):
        pod = owner["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, owner["metadata"]["name"]
        if (
            owner["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
            != "redis"
        ):
            assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
                HQM_UID,
                HQM_UID,
            )
    for c in containers(objects):
        context = c.spec["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, c.id
        assert context["readOnlyRootFilesystem"] is True, c.id
        assert context["capabilities"]["drop"] == ["ALL"], c.id
        iptables = c.image_name == "openhqm-init"
        assert set(context["capabilities"].get("add", [])) == (
            TRANSPARENT_CAPABILITIES if iptables else set()
        ), c.id
        assert ("runAsUser" in context) == iptables, c.id
        if iptables:
            assert c.init and context["runAsUser"] == 0 and context["runAsNonRoot"] is False


@pytest.mark.parametrize("name", BUILDS)
def test_the_app_port_is_reached_only_through_the_sidecar(name: str):
    objects = build(BUILDS[name])
    app = find(objects, "Deployment", "hqm-app")
    pod = _pod(name, "hqm-app")
    proxy = pod["proxy"][1]
    labels = app["spec"]["template"]["metadata"]["labels"]
    policies = [
        o
        for o in objects
        if o["kind"] == "NetworkPolicy" and selects(o["spec"]["podSelector"], labels)
    ]
    (policy,) = policies
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {proxy.port("listen"), proxy.port("admin")} | _redirected(pod)
    app_ports = {
        p
        for c in containers(objects)
        if c.owner is app and c.spec["name"] == "app"
        for p in c.ports()
    }
    assert app_ports, "no app port"
    # Open only where the pod's nat rules hand every connection to the sidecar.
    assert not (app_ports - _redirected(pod)) & allowed, "the app's own port is open"


def test_only_the_sidecars_and_workers_reach_redis():
    objects = build(BUILDS["overlays/redis-dev"])
    policy = find(objects, "NetworkPolicy", "hqm-redis")["spec"]
    redis = find(objects, "StatefulSet", "hqm-redis")["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["podSelector"], redis)
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    for deployment, allowed in (("hqm-app", True), ("hqm-worker", True)):
        labels = find(objects, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
        assert selects(source["podSelector"], labels) is allowed
    assert not selects(source["podSelector"], {"app.kubernetes.io/name": "other"})
    assert not selects(source["podSelector"], redis)
    assert [p["port"] for p in rule["ports"]] == [urlsplit(_redis_url()).port]


def test_native_sidecar_starts_before_the_app():
    app = find(build(BUILDS["overlays/native-sidecar"]), "Deployment", "hqm-app")["spec"][
        "template"
    ]["spec"]
    assert [c["name"] for c in app["containers"]] == ["app"]
    (sidecar,) = app["initContainers"]
    assert sidecar["name"] == "hqm" and sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"


def test_transparent_mode_keeps_the_service_on_the_app_port():
    objects = build(BUILDS["overlays/transparent"])
    pod = _pod("overlays/transparent", "hqm-app")
    spec = find(objects, "Deployment", "hqm-app")["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["hqm-iptables"]
    assert "--transparent" in pod["proxy"][1].args
    _, target = _target_port(objects, "hqm-app", 80)
    assert target in _redirected(pod) == {8080}


def test_redis_dev_is_one_redis_with_an_append_only_file():
    objects = build(BUILDS["overlays/redis-dev"])
    redis = find(objects, "StatefulSet", "hqm-redis")["spec"]
    (container,) = redis["template"]["spec"]["containers"]
    args = container["args"]
    assert _flag(tuple(args), "--appendonly") == "yes"
    assert _flag(tuple(args), "--appendfsync") == "everysec"
    assert _flag(tuple(args), "--maxmemory-policy") == "noeviction", (
        "eviction drops queued requests"
    )
    major = int(container["image"].split(":")[1].split(".")[0])
    assert major >= 7, "KEDA's lagCount needs Redis 7"
    assert redis["volumeClaimTemplates"] and container["volumeMounts"][0]["mountPath"] == "/data"
    url = urlsplit(_redis_url())
    service = find(objects, "Service", url.hostname)
    assert [p["port"] for p in service["spec"]["ports"]] == [url.port]
    assert service["metadata"]["name"] == redis["serviceName"]
    notes = (K8S / "overlays" / "redis-dev" / "kustomization.yaml").read_text()
    assert "Sentinel" in notes and "Cluster" in notes


# --- docker-compose.yml ---------------------------------------------------------------------


COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
COMPOSE_HQM = [n for n, s in COMPOSE["services"].items() if s.get("command", [""])[0] in COMMANDS]


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict)
    return {**FINAL.env(), **{k: str(v) for k, v in environment.items()}}


def test_compose_services():
    services = COMPOSE["services"]
    image = f"openhqm:{hqm.__version__}"
    redis = services["redis"]["command"]
    assert _flag(tuple(redis), "--appendonly") == "yes"
    app = services["app"]
    assert app["image"] == image and app["build"] == "."
    python, script, port = app["entrypoint"]
    assert python == "python"
    (mount,) = app["volumes"]
    source, target, _ = mount.split(":")
    assert target == script and (ROOT / source).resolve() == ROOT / "examples" / "echo_app.py"
    commands = sorted(services[name]["command"][0] for name in COMPOSE_HQM)
    assert commands == ["proxy", "worker", "worker"]
    for name in COMPOSE_HQM:
        assert services[name]["image"] == image and services[name]["network_mode"] == "service:app"
    assert port == "8080"


@pytest.mark.parametrize("name", COMPOSE_HQM)
def test_compose_hqm_services_are_accepted_by_config_check(name: str):
    service = COMPOSE["services"][name]
    command, *args = service["command"]
    env = _compose_env(service)
    for key in service.get("environment", {}):
        table = COMMANDS[command]
        assert key in {n for o in table.options for n in table.env_names(o)}, key
    settings = config_check(command, args, env)
    assert settings["redis"] == "redis://redis:6379/0"
    host, port = str(settings["upstream"]).rsplit(":", 1)
    assert (host, port) == ("localhost", COMPOSE["services"]["app"]["entrypoint"][-1])
    if command == "proxy":
        published = {int(p.split(":")[0]) for p in COMPOSE["services"]["app"]["ports"]}
        listen = int(str(settings["listen"]).rsplit(":", 1)[1])
        admin = int(str(settings["admin"]).rsplit(":", 1)[1])
        assert {listen, admin} == published


def test_compose_admin_ports_differ_within_the_shared_network():
    ports = []
    for name in COMPOSE_HQM:
        service = COMPOSE["services"][name]
        command, *args = service["command"]
        settings = config_check(command, args, _compose_env(service))
        ports.append(int(str(settings["admin"]).rsplit(":", 1)[1]))
    assert len(ports) == len(set(ports)), ports


def test_compose_services_answer_the_readme_post(redis_server: RedisServer):
    """The compose services' own commands and environment, on loopback ports of this
    test and its Redis: the README's POST is queued and answered by the app."""
    services = COMPOSE["services"]
    _, _, app_port = services["app"]["entrypoint"]
    (mount,) = services["app"]["volumes"]
    port = free_port()
    app = subprocess.Popen(
        [sys.executable, str(ROOT / mount.split(":")[0]), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    running: dict[str, HqmProcess] = {}
    try:
        assert app.stdout is not None and "echo app on" in app.stdout.readline()
        for name in COMPOSE_HQM:
            argv = [w.replace(f":{app_port}", f":{port}") for w in services[name]["command"]]
            env = {k: v for k, v in _compose_env(services[name]).items() if k.startswith("HQM_")}
            env |= {"HQM_REDIS": redis_server.url, "HQM_PROXY_LISTEN": "127.0.0.1:0"}
            env |= {"HQM_PROXY_ADMIN": "127.0.0.1:0", "HQM_WORKER_ADMIN": "127.0.0.1:0"}
            running[name] = HqmProcess(*argv, env=env)
        for process in running.values():
            process.wait_ready()
        proxy = running["proxy"]
        accepted = request(proxy.port, b"POST", b"/orders?id=7", body=b"\x00binary\xff")
        assert accepted.status == 202, accepted
        result = poll_result(proxy.port, accepted.json()["id"])
        assert result.status == 200
        assert (result.json()["method"], result.json()["path"]) == ("POST", "/orders?id=7")
    finally:
        for process in running.values():
            process.kill()
        app.kill()
        app.wait()
