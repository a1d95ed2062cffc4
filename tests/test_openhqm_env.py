"""The original OpenHQM's OPENHQM_* environment on hqm: each alias, ours win, ignored
ones logged once, the original's defaults; and the original's Kubernetes manifests
(their env blocks and commands as written) serving a request end to end against a real
redis-server and a real app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from hqm.config.commands import COMMANDS
from hqm.config.openhqm_env import ALIASES, apply_aliases, markdown, resolve_aliased
from hqm.config.options import ConfigError
from hqm.config.resolve import Source
from tests.redis_server import free_port, redis_server
from tests.support import HqmProcess, request, wait_until

__all__ = ["redis_server"]  # the fixture, imported for pytest
ROOT = Path(__file__).resolve().parent.parent

#: Every alias with a counterpart: (variable, value, the HQM_* values it stands for).
ALIAS_CASES = [
    ("OPENHQM_SERVER__HOST", "127.0.0.1", {"HQM_PROXY_LISTEN": "127.0.0.1:8000"}),
    ("OPENHQM_SERVER__PORT", "9000", {"HQM_PROXY_LISTEN": "0.0.0.0:9000"}),
    ("OPENHQM_QUEUE__REDIS_URL", "redis://r:6379/1", {"HQM_REDIS": "redis://r:6379/1"}),
    ("OPENHQM_QUEUE__REQUEST_QUEUE_NAME", "orders", {"HQM_QUEUE": "orders"}),
    ("OPENHQM_WORKER__COUNT", "5", {"HQM_WORKER_CONCURRENCY": "5"}),
    ("OPENHQM_WORKER__TIMEOUT_SECONDS", "120", {"HQM_WORKER_READ_TIMEOUT": "120"}),
    ("OPENHQM_WORKER__MAX_RETRIES", "3", {"HQM_WORKER_MAX_ATTEMPTS": "4"}),  # retries + 1
    ("OPENHQM_WORKER__RETRY_DELAY_BASE", "1.5", {"HQM_WORKER_RETRY_BASE": "1.5"}),
    ("OPENHQM_WORKER__RETRY_DELAY_MAX", "60.0", {"HQM_WORKER_RETRY_MAX": "60.0"}),
    (
        "OPENHQM_PROXY__DEFAULT_ENDPOINT",
        "http://app:8080/api/process?v=2",
        {"HQM_UPSTREAM": "http://app:8080", "HQM_PROXY_OPENHQM_TARGET": "/api/process?v=2"},
    ),
    ("OPENHQM_CACHE__TTL_SECONDS", "3600", {"HQM_RESULT_TTL": "3600"}),
    ("OPENHQM_MONITORING__LOG_LEVEL", "WARN", {"HQM_LOG_LEVEL": "warning"}),
]
#: What each HQM_* variable is to one command, for resolving it: (command, option).
OPTION_OF = {
    "HQM_PROXY_LISTEN": ("proxy", "listen"),
    "HQM_PROXY_OPENHQM_TARGET": ("proxy", "openhqm-target"),
    "HQM_REDIS": ("worker", "redis"),
    "HQM_UPSTREAM": ("worker", "upstream"),
    "HQM_QUEUE": ("worker", "queue"),
    "HQM_RESULT_TTL": ("worker", "result-ttl"),
    "HQM_LOG_LEVEL": ("worker", "log-level"),
}
REQUIRED = {"HQM_UPSTREAM": "a:1", "HQM_REDIS": "redis://r:1/0"}


def test_every_alias_with_a_counterpart_has_a_case():
    assert {a.name for a in ALIASES if a.targets} == {name for name, _, _ in ALIAS_CASES}


@pytest.mark.parametrize(("name", "value", "expected"), ALIAS_CASES, ids=lambda c: str(c)[:40])
def test_each_alias_sets_its_option_and_names_itself_as_the_origin(name, value, expected):
    result = apply_aliases({name: value})
    for var, text in expected.items():
        assert (result.env[var], result.used[var]) == (text, name)
        command, option = OPTION_OF.get(var, ("worker", var[len("HQM_WORKER_") :].lower()))
        option = option.replace("_", "-")
        env = {**{k: v for k, v in REQUIRED.items() if k not in expected}, name: value}
        effective = resolve_aliased(COMMANDS[command], {}, env).effective
        [setting] = [s for s in effective if s.option.name == option]
        assert (setting.source, setting.origin) == (Source.ENV, name)
        assert setting.value == setting.option.parse(text)


def test_names_are_case_insensitive_and_host_and_port_make_one_listen():
    result = apply_aliases({"openhqm_server__port": "9000", "OPENHQM_SERVER__HOST": "::"})
    assert result.env["HQM_PROXY_LISTEN"] == "[::]:9000"
    assert result.used["HQM_PROXY_LISTEN"] == "OPENHQM_SERVER__HOST + OPENHQM_SERVER__PORT"


@pytest.mark.parametrize(
    ("level", "ours"),
    [("INFO", "info"), ("warning", "warning"), ("Fatal", "critical"), ("verbose", "info")],
)
def test_log_levels_as_the_original_read_them(level, ours):
    assert apply_aliases({"OPENHQM_MONITORING__LOG_LEVEL": level}).env["HQM_LOG_LEVEL"] == ours


def _value(command: str, option: str, env: dict, flags: dict | None = None):
    effective = resolve_aliased(COMMANDS[command], flags or {}, env).effective
    return next((s.value, s.source, s.origin) for s in effective if s.option.name == option)


def test_ours_win_flag_then_hqm_env_then_alias_then_file(tmp_path: Path):
    env = {**REQUIRED, "OPENHQM_WORKER__MAX_RETRIES": "3"}
    assert _value("worker", "max-attempts", env)[:2] == (4, Source.ENV)
    ours = {**env, "HQM_WORKER_MAX_ATTEMPTS": "9"}
    assert _value("worker", "max-attempts", ours) == (9, Source.ENV, "HQM_WORKER_MAX_ATTEMPTS")
    assert _value("worker", "max-attempts", ours, {"max_attempts": "7"})[:2] == (7, Source.FLAG)
    path = tmp_path / "hqm.toml"
    path.write_text("[worker]\nmax_attempts = 2\n")
    in_file = {**env, "HQM_CONFIG": str(path)}
    assert _value("worker", "max-attempts", in_file)[:2] == (4, Source.ENV)


def test_the_originals_defaults_apply_only_with_openhqm_settings_and_give_way(tmp_path: Path):
    with pytest.raises(ConfigError, match="--redis is required"):
        resolve_aliased(COMMANDS["worker"], {}, {"HQM_UPSTREAM": "a:1"})
    seed = {"OPENHQM_PROXY__ENABLED": "true"}
    redis = _value("worker", "redis", {**seed, "HQM_UPSTREAM": "a:1"})
    assert redis[:2] == ("redis://localhost:6379", Source.DEFAULT)
    assert redis[2].startswith("OpenHQM default")
    assert _value("worker", "read-timeout", {**seed, "HQM_UPSTREAM": "a:1"})[0] == 300
    upstream = _value("proxy", "upstream", seed)
    assert (str(upstream[0]), upstream[1]) == ("localhost:8080", Source.DEFAULT)
    assert _value("proxy", "redis", {**seed, "HQM_REDIS": "redis://mine:1/0"})[0] == (
        "redis://mine:1/0"
    )
    path = tmp_path / "hqm.toml"
    path.write_text('redis = "redis://from-file:1/0"\n[worker]\nread_timeout = 7\n')
    with_file = {**seed, "HQM_UPSTREAM": "a:1", "HQM_CONFIG": str(path)}
    assert _value("worker", "redis", with_file)[:2] == ("redis://from-file:1/0", Source.FILE)
    assert _value("worker", "read-timeout", with_file)[:2] == (7, Source.FILE)


def test_settings_without_a_counterpart_are_ignored_and_as_is_values_are_not():
    env = {
        "OPENHQM_WORKER__BATCH_SIZE": "10",
        "OPENHQM_CACHE__REDIS_URL": "redis://r:6379",
        "OPENHQM_QUEUE__KAFKA_TOPICS": '["t"]',
        "OPENHQM_PARTITIONING__STRATEGY": "hash",
        "OPENHQM_NOT_A_SETTING": "x",
        "OPENHQM_PROXY__ENABLED": "true",
        "OPENHQM_QUEUE__TYPE": "redis",
        "OPENHQM_ROUTING__ENABLED": "false",
        "OPENHQM_MONITORING__METRICS_ENABLED": "false",
    }
    assert set(apply_aliases(env).ignored) == {
        "OPENHQM_WORKER__BATCH_SIZE",
        "OPENHQM_CACHE__REDIS_URL",
        "OPENHQM_QUEUE__KAFKA_TOPICS",
        "OPENHQM_PARTITIONING__STRATEGY",
        "OPENHQM_NOT_A_SETTING",
        "OPENHQM_MONITORING__METRICS_ENABLED",
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OPENHQM_QUEUE__TYPE", "kafka"),
        ("OPENHQM_PROXY__DEFAULT_ENDPOINT", "https://api.example.com/process"),
        ("OPENHQM_PROXY__DEFAULT_ENDPOINT", "my-api"),
        ("OPENHQM_WORKER__MAX_RETRIES", "three"),
        ("OPENHQM_SERVER__PORT", "99999"),
    ],
)
def test_values_hqm_cannot_use_are_refused_naming_the_variable(name, value):
    with pytest.raises(ConfigError) as caught:
        apply_aliases({name: value})
    assert str(caught.value).startswith(f"{name}={value!r}")


def _hqm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hqm", *args],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_check_names_the_openhqm_variable_and_lists_the_ignored():
    env = {
        "OPENHQM_WORKER__MAX_RETRIES": "3",
        "OPENHQM_WORKER__BATCH_SIZE": "10",
        "OPENHQM_PROXY__DEFAULT_ENDPOINT": "http://app:8080",
    }
    done = _hqm("config", "check", "--json", "worker", env=env)
    assert done.returncode == 0, done.stderr
    rows = {row["option"]: row for row in json.loads(done.stdout)["worker"]}
    assert (rows["max-attempts"]["value"], rows["max-attempts"]["origin"]) == (
        4,
        "OPENHQM_WORKER__MAX_RETRIES",
    )
    assert rows["upstream"]["origin"] == "OPENHQM_PROXY__DEFAULT_ENDPOINT"
    assert rows["redis"]["source"] == "default" and "OpenHQM" in rows["redis"]["origin"]
    assert done.stderr.count("OPENHQM_WORKER__BATCH_SIZE") == 1
    refused = _hqm("config", "check", "worker", env={"OPENHQM_QUEUE__TYPE": "sqs"})
    assert refused.returncode == 2
    assert refused.stderr.startswith("Error: OPENHQM_QUEUE__TYPE='sqs': ")
    assert refused.stderr.count("\n") == 1


def test_the_readme_table_is_the_alias_table():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- openhqm-env -->\n")[1].split("<!-- /openhqm-env -->")[0]
    assert block == markdown(), "run: python -m hqm.config.openhqm_env README.md"


# --- the original's manifests, as written -------------------------------------------
#: Placeholders for what the manifests take from the cluster.
SECRET_REDIS_URL = "<secretKeyRef redis-credentials>"
POD_NAME = "openhqm-workers-7c9d5-x2k4q"


@dataclass(frozen=True)
class Manifest:
    source: str
    #: None: the image's default command (here ENTRYPOINT hqm, CMD proxy).
    sidecar_command: list[str] | None
    sidecar_env: list[tuple[str, str]]
    worker_command: list[str]
    worker_env: list[tuple[str, str]]


MANIFESTS = [
    Manifest(
        "fok666/openhqm docs/SIDECAR_REVOLUTION.md, Deployment 1 and 2",
        None,
        [
            ("OPENHQM_PROXY__ENABLED", "true"),
            ("OPENHQM_PROXY__DEFAULT_ENDPOINT", "http://localhost:8080"),  # Your app
        ],
        ["python", "-m", "openhqm.worker.worker"],
        [
            ("OPENHQM_PROXY__ENABLED", "true"),
            ("OPENHQM_PROXY__DEFAULT_ENDPOINT", "http://your-app-service:8080"),
        ],
    ),
    Manifest(
        "fok666/openhqm docs/KUBERNETES_SIDECAR.md, Basic Sidecar Configuration",
        ["python", "-m", "openhqm.api.listener"],
        [
            ("OPENHQM_PROXY__ENABLED", "true"),
            ("OPENHQM_PROXY__DEFAULT_ENDPOINT", "http://localhost:8080"),
            ("OPENHQM_QUEUE__TYPE", "redis"),
            ("OPENHQM_QUEUE__REDIS_URL", SECRET_REDIS_URL),
            ("OPENHQM_CACHE__TYPE", "redis"),
            ("OPENHQM_CACHE__REDIS_URL", SECRET_REDIS_URL),
            ("OPENHQM_MONITORING__LOG_LEVEL", "INFO"),
            ("OPENHQM_MONITORING__METRICS_ENABLED", "true"),
        ],
        ["python", "-m", "openhqm.worker.worker", "$(POD_NAME)"],
        [
            ("POD_NAME", POD_NAME),  # valueFrom fieldRef metadata.name
            ("OPENHQM_PROXY__ENABLED", "true"),
            ("OPENHQM_PROXY__DEFAULT_ENDPOINT", "http://legacy-app-internal:8080"),
            ("OPENHQM_QUEUE__TYPE", "redis"),
            ("OPENHQM_QUEUE__REDIS_URL", SECRET_REDIS_URL),
            ("OPENHQM_CACHE__TYPE", "redis"),
            ("OPENHQM_CACHE__REDIS_URL", SECRET_REDIS_URL),
            ("OPENHQM_WORKER__BATCH_SIZE", "10"),
            ("OPENHQM_WORKER__TIMEOUT_SECONDS", "300"),
            ("OPENHQM_WORKER__MAX_RETRIES", "3"),
            ("OPENHQM_MONITORING__LOG_LEVEL", "INFO"),
        ],
    ),
]
APP_URLS = ("http://localhost:8080", "http://your-app-service:8080")
APP_URLS += ("http://legacy-app-internal:8080",)


class Started(HqmProcess):
    """``python -m MODULE ARGS`` with exactly ``env`` (and PATH): readiness read from its
    JSON log as HqmProcess reads it."""

    def __init__(self, module: str, *args: str, env: dict[str, str]) -> None:
        self.args = args
        self.lines = []
        self._ready = threading.Event()
        self.info = {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", ""), **env, "PYTHONUNBUFFERED": "1"},
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def _env(block: list[tuple[str, str]], app: str, redis_url: str) -> dict[str, str]:
    """The block as the pod gets it: the secret's value, the app's address on this host."""
    env = {}
    for name, value in block:
        env[name] = app if value in APP_URLS else redis_url if value == SECRET_REDIS_URL else value
    return env


def _start(command: list[str] | None, env: dict[str, str]) -> Started:
    command = command or ["hqm", "proxy"]  # the image: ENTRYPOINT ["hqm"], CMD ["proxy"]
    argv = [POD_NAME if arg == "$(POD_NAME)" else arg for arg in command]  # kubelet expands it
    if argv[0] == "hqm":
        return Started("hqm", *argv[1:], env=env)
    assert argv[:2] == ["python", "-m"], argv
    return Started(argv[2], *argv[3:], env=env)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=["sidecar-revolution", "kubernetes-sidecar"])
def test_the_originals_manifests_serve_a_request(manifest, redis_server, backend):
    """Changed from the manifests, and only this: hosts point at this test's app and
    Redis on 127.0.0.1 (where they say localhost or a Service name; the secret is the
    test's Redis URL); where the manifest gives no Redis URL (relying on the original's
    redis://localhost:6379, which hqm applies too) OPENHQM_QUEUE__REDIS_URL names the
    test's; the sidecar listens on a free port (OPENHQM_SERVER__PORT, the original's
    8000 may be taken) and both admin listeners on port 0 (the image's HQM_PROXY_ADMIN /
    HQM_WORKER_ADMIN give 0.0.0.0:9090 / :9091)."""
    app = f"http://{backend.address}"
    port = free_port()
    sidecar_env = _env(manifest.sidecar_env, app, redis_server.url)
    worker_env = _env(manifest.worker_env, app, redis_server.url)
    for env in (sidecar_env, worker_env):
        env.setdefault("OPENHQM_QUEUE__REDIS_URL", redis_server.url)
    sidecar_env |= {"OPENHQM_SERVER__PORT": str(port), "HQM_PROXY_ADMIN": "127.0.0.1:0"}
    worker_env |= {"HQM_WORKER_ADMIN": "127.0.0.1:0"}
    sidecar = _start(manifest.sidecar_command, sidecar_env)
    worker = _start(manifest.worker_command, worker_env)
    try:
        sidecar.wait_ready()
        worker.wait_ready()
        assert sidecar.port == port
        body = json.dumps({"payload": {"op": "echo", "data": "Hello World"}}).encode()
        accepted = request(port, b"POST", b"/api/v1/submit", [], body)
        assert accepted.status == 202, accepted.body
        correlation_id = accepted.json()["correlation_id"]
        assert str(uuid.UUID(correlation_id)) == correlation_id
        path = f"/api/v1/response/{correlation_id}".encode()
        answers = []
        assert wait_until(lambda: answers.append(request(port, b"GET", path)) or (
            answers[-1].status == 200
        ))  # fmt: skip
        assert answers[-1].json()["status"] == "COMPLETED"
        [seen] = backend.seen
        assert (seen.method, seen.target, json.loads(seen.body)) == (
            b"POST",
            b"/",
            {"op": "echo", "data": "Hello World"},
        )
        assert seen.header(b"Content-Type") == b"application/json"
        if "$(POD_NAME)" in manifest.worker_command:
            assert worker.info["consumer"] == POD_NAME
    finally:
        sidecar.terminate()
        worker.terminate()
    # every OPENHQM_ setting hqm ignores is logged, once, by the process that reads it
    for process, env in ((sidecar, sidecar_env), (worker, worker_env)):
        ignored = set(apply_aliases(env).ignored)
        log = process.log()
        for name in ignored:
            assert sum(name in line for line in log.splitlines()) == 1, (name, log)
        assert ("OpenHQM setting ignored" in log) == bool(ignored)
