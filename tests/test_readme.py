"""The README says what the code does: its flag tables are the options tables, its
`hqm config check` example is real output, its example app takes the POST it shows."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from hqm.config.commands import COMMANDS
from hqm.config.docs import rewrite
from tests.redis_server import free_port
from tests.support import poll_result, proxy, request

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_flag_tables_are_the_options_tables():
    assert rewrite(README) == README, "run: python -m hqm.config.docs README.md"
    for name in COMMANDS:
        assert f"<!-- options:{name} -->" in README, name


#: Flags the README may name that are not settings: action switches and other tools'.
_NOT_SETTINGS = {"--json", "--yes", "--all", "--help", "--data-binary", "--rounds"}
_NOT_SETTINGS |= {"--duration", "--no-forwarded-headers", "--version", "--some-flag"}
_NOT_SETTINGS |= {"--target"}  # docker build's (the transparent overlay's init image)
_NOT_SETTINGS |= {"--client"}  # `hqm routes test`: part of the request it describes
_NOT_SETTINGS |= {"--configs", "--baseline"}  # flags of the benches (bench/*.py)


def test_every_flag_the_readme_names_exists():
    known = {o.flag for c in COMMANDS.values() for o in c.options} | _NOT_SETTINGS
    known |= {f"--no-{o.name}" for c in COMMANDS.values() for o in c.options if o.negatable}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", README))
    assert named - known == set()


def test_config_check_example_is_real_output(tmp_path: Path):
    block = README.split("<!-- config-check -->")[1].split("<!-- /config-check -->")[0]
    lines = block.strip().strip("`").removeprefix("console").strip().splitlines()
    assert lines[0] == "$ cat hqm.toml"
    command_at = next(i for i, line in enumerate(lines) if line.startswith("$ HQM_"))
    (tmp_path / "hqm.toml").write_text("\n".join(lines[1:command_at]) + "\n")
    words = shlex.split(lines[command_at][2:])
    env = dict(word.split("=", 1) for word in words if re.fullmatch(r"HQM_\w+=.*", word))
    argv = [w for w in words if w not in {f"{k}={v}" for k, v in env.items()}]
    assert argv[:3] == ["hqm", "config", "check"]
    done = subprocess.run(
        [sys.executable, "-m", "hqm", *argv[1:]],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == lines[command_at + 1 :]


def test_the_example_app_takes_the_readme_post():
    port = free_port()
    app = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "echo_app.py"), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert app.stdout is not None and "echo app on" in app.stdout.readline()
        hqm = proxy(f"127.0.0.1:{port}")
        try:
            accepted = request(hqm.port, b"POST", b"/orders?id=7", body=b"\x00binary\xff")
            assert accepted.status == 202
            assert accepted.header(b"location") == accepted.json()["location"].encode()
            result = poll_result(hqm.port, accepted.json()["id"])
            assert result.status == 200
            assert result.json()["method"] == "POST"
            assert result.json()["path"] == "/orders?id=7"
            direct = request(hqm.port, b"GET", b"/hello", [(b"Prefer", b"wait=5")])
            assert direct.status == 200 and direct.json()["path"] == "/hello"
        finally:
            hqm.terminate()
    finally:
        app.kill()
        app.wait()


def _section(title: str) -> str:
    start = README.index(title)
    return README[start : README.find("\n#", start)]


def test_the_migration_map_names_commands_files_and_keys_that_exist():
    from hqm.queue.keys import QueueKeys

    table = _section("Where the original's commands are now").split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == 3, rows
    named = [code for row in rows for code in re.findall(r"`([^`]+)`", row.split(" | ")[1])]
    assert f"redis-cli XLEN '{QueueKeys('default').stream}'" in named
    for code in named:
        words = shlex.split(code)
        if words[0] == "hqm":  # its subcommand, with the options the README gives it
            run = [sys.executable, "-m", "hqm", words[1], "--help"]
            assert subprocess.run(run, capture_output=True).returncode == 0, code
            assert all(
                w.split("=")[0] in subprocess.check_output(run, text=True) for w in words[2::2]
            )
        elif words[0] in ("kubectl", "docker"):
            assert all((ROOT / w).exists() for w in words if "/" in w), code
        elif "/" in code or code.endswith(".yml"):
            assert (ROOT / code).exists(), code
    assert (ROOT / "docker-compose.yml").exists()


def test_the_deploy_steps_name_what_the_manifests_need():
    base = (ROOT / "k8s/base/kustomization.yaml").read_text()
    for name in re.findall(r"in ([\w.-]+\.yaml)\)", base):
        assert (ROOT / "k8s/base" / name).exists(), name
    version = re.search(r"Kubernetes >= (\d+\.\d+)", base).group(1)
    deploy = _section("## Deploy on Kubernetes")
    assert f"Kubernetes >= {version}" in deploy
    assert set(re.findall(r"Kubernetes >= (\d+\.\d+)", deploy)) == {version}
    assert "ServiceMonitor CRD" in deploy and "servicemonitor.yaml" in base
    init = re.search(r"docker build --target (\S+) -t (\S+):", deploy)
    assert init is not None and f" AS {init.group(1)}" in (ROOT / "Dockerfile").read_text()
    overlay = (ROOT / "k8s/overlays/transparent/kustomization.yaml").read_text()
    assert f"name: {init.group(2)}" in overlay
