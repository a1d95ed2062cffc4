"""What an operator gives hqm besides flags: the --config file's bytes and the HQM_*
environment. Every input error is one line naming where it came from, exit 2, never a
traceback (issue 20, items 1, 2 and 7). Real processes, as a shell sees them.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import HqmProcess, run_hqm

REDIS = "redis://127.0.0.1:1/0"
hqm = run_hqm


def one_line_exit_2(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


# --- item 1: the --config file's bytes --------------------------------------------------
@pytest.fixture
def latin1(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[proxy]\n# caf\xe9 au lait\nmax_body = 5\n")
    return path


@pytest.mark.parametrize(
    ("words", "args"),
    [
        (["proxy"], ["--upstream", "a:1"]),
        (["config", "check"], ["proxy", "--upstream", "a:1"]),
        (["config", "check"], []),
        (["worker"], ["--upstream", "a:1", "--redis", REDIS]),
        (["dlq", "list"], ["--redis", REDIS]),
    ],
    ids=["proxy", "config-check-proxy", "config-check", "worker", "dlq"],
)
def test_a_non_utf8_config_is_one_line_naming_the_byte_and_its_source(latin1, words, args):
    by_flag = one_line_exit_2(hqm(*words, "--config", str(latin1), *args))
    assert f"--config {latin1}: not UTF-8: byte 0xe9 at offset 13 (line 2)" in by_flag
    by_env = one_line_exit_2(hqm(*words, *args, env={"HQM_CONFIG": str(latin1)}))
    assert f"HQM_CONFIG={latin1}: not UTF-8: byte 0xe9 at offset 13 (line 2)" in by_env


def test_a_utf8_bom_is_skipped_as_editors_write_one(tmp_path: Path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[proxy]\nmax_body = 5\n")
    done = hqm("config", "check", "--config", str(path), "proxy", "--upstream", "a:1")
    assert done.returncode == 0, done.stderr
    assert f"file {path} [proxy] max_body" in done.stdout


def test_a_bom_does_not_hide_what_follows_it(tmp_path: Path):
    """Only the mark is skipped: a bad byte after it is still named at its offset in the
    file, and a second BOM is no TOML."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[proxy]\xff\n")
    assert "byte 0xff at offset 10 (line 1)" in one_line_exit_2(
        hqm("config", "check", "--config", str(path), "proxy", "--upstream", "a:1")
    )
    path.write_bytes(b"\xef\xbb\xbf\xef\xbb\xbf[proxy]\n")
    assert "not valid TOML" in one_line_exit_2(
        hqm("config", "check", "--config", str(path), "proxy", "--upstream", "a:1")
    )


def test_an_endless_config_file_is_refused_not_read_to_the_end():
    done = hqm("proxy", "--config", "/dev/zero", "--upstream", "a:1")
    assert "--config /dev/zero: longer than 1048576 bytes" in one_line_exit_2(done)


def test_a_directory_as_config_is_one_line(tmp_path: Path):
    done = hqm("proxy", "--upstream", "a:1", env={"HQM_CONFIG": str(tmp_path)})
    assert f"HQM_CONFIG={tmp_path}: cannot read" in one_line_exit_2(done)


# --- item 7: the replay key -------------------------------------------------------------
#: The key k8s/base/replay-key.yaml ships (public: it is in the repository).
EXAMPLE_KEY = yaml.safe_load(
    (Path(__file__).resolve().parent.parent / "k8s/base/replay-key.yaml").read_text()
)["stringData"]["key"]
MAKE = "make one with `head -c 32 /dev/urandom | base64`"


@pytest.mark.parametrize("command", ["proxy", "worker"])
def test_the_shipped_example_replay_key_is_refused(tmp_path: Path, command):
    key = tmp_path / "key"
    key.write_text(EXAMPLE_KEY + "\n")  # as the Secret's volume holds it
    args = ["--upstream", "a:1", "--redis", REDIS, "--replay-key-file", str(key)]
    for words in ([command], ["config", "check", command]):
        message = one_line_exit_2(hqm(*words, *args))
        assert f"--replay-key-file {key}: the example key of k8s/base/replay-key.yaml" in message
        assert MAKE in message
    by_env = one_line_exit_2(hqm(command, *args[:4], env={"HQM_REPLAY_KEY": EXAMPLE_KEY.lower()}))
    assert "HQM_REPLAY_KEY (--replay-key): the example key" in by_env


@pytest.mark.parametrize("key", ["short", "x" * 31, "é" * 15 + "x"])
def test_a_replay_key_under_32_bytes_is_refused(key: str):
    for given in (["--replay-key", key], []):
        env = {} if given else {"HQM_REPLAY_KEY": key}
        message = one_line_exit_2(hqm("proxy", "--upstream", "a:1", *given, env=env))
        origin = "--replay-key" if given else "HQM_REPLAY_KEY (--replay-key)"
        needed = len(key.encode())
        assert f"{origin}: the replay key is {needed} bytes, at least 32" in message
        assert MAKE in message


def test_a_replay_key_of_32_bytes_is_taken(tmp_path: Path):
    key = tmp_path / "key"
    key.write_text(base64.b64encode(os.urandom(32)).decode()[:32] + "\n")
    done = hqm("config", "check", "proxy", "--upstream", "a:1", "--replay-key-file", str(key))
    assert done.returncode == 0, done.stderr
    (row,) = [line.split() for line in done.stdout.splitlines() if "--replay-key-file" in line]
    assert row == ["--replay-key-file", str(key), "flag"]
    made = subprocess.run(
        ["sh", "-c", "head -c 32 /dev/urandom | base64"], capture_output=True, text=True
    ).stdout.strip()
    done = hqm("config", "check", "proxy", "--upstream", "a:1", env={"HQM_REPLAY_KEY": made})
    assert done.returncode == 0, done.stderr


def test_the_readme_step_that_makes_a_key_makes_one_hqm_takes(tmp_path: Path):
    """The deploy steps' `sed` line, run on a copy of the Secret, leaves a key hqm takes."""
    root = Path(__file__).resolve().parent.parent
    (step,) = [
        line
        for line in (root / "README.md").read_text().splitlines()
        if line.startswith("sed -i ") and "replay-key.yaml" in line
    ]
    (tmp_path / "k8s/base").mkdir(parents=True)
    (tmp_path / "k8s/base/replay-key.yaml").write_text(
        (root / "k8s/base/replay-key.yaml").read_text()
    )
    subprocess.run(["sh", "-c", step], cwd=tmp_path, check=True, timeout=30)
    made = yaml.safe_load((tmp_path / "k8s/base/replay-key.yaml").read_text())
    key = tmp_path / "key"
    key.write_text(made["stringData"]["key"] + "\n")  # as the Secret's volume holds it
    done = hqm("config", "check", "proxy", "--upstream", "a:1", "--replay-key-file", str(key))
    assert done.returncode == 0, done.stderr
    assert made["metadata"]["name"] == "hqm-replay-key" and len(made["stringData"]["key"]) == 44


# --- item 2: HQM_* variables that set nothing -------------------------------------------
def test_config_check_lists_unknown_hqm_variables_with_the_closest_one():
    env = {"HQM_PROXY_MAXBODY": "5", "HQM_MAX_BODY": "5", "hqm_redis": "redis://r:1/0"}
    done = hqm("config", "check", "proxy", "--upstream", "a:1", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "ignored: HQM_MAX_BODY (no hqm setting; did you mean HQM_PROXY_MAX_BODY?)",
        "ignored: HQM_PROXY_MAXBODY (no hqm setting; did you mean HQM_PROXY_MAX_BODY?)",
        "ignored: hqm_redis (no hqm setting; did you mean HQM_REDIS?)",
    ]
    (row,) = [line.split() for line in done.stdout.splitlines() if "--max-body" in line]
    assert row[2] == "default"  # still ignored: a warning, not a guess


def test_variables_hqm_reads_are_not_reported():
    """Every table's variables (a proxy's block may hold the worker's), the supervisor's
    child index and the test suite's HQM_TEST_* are no typos."""
    env = {
        "HQM_PARSER": "h11",
        "HQM_CONFIG_X": "",  # (a near miss is reported: the control of this test)
        "HQM_REPLAY_KEY": "k" * 32,
        "HQM_WORKER_RATE": "5",
        "HQM_STATUS_MAX_AGE": "5",
        "HQM_DLQ_COUNT": "5",
        "HQM_TEST_OUTAGE_S": "20",
    }
    done = hqm("config", "check", "proxy", "--upstream", "a:1", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "ignored: HQM_CONFIG_X (no hqm setting; did you mean HQM_CONFIG?)"
    ]


def test_the_proxy_logs_an_unknown_variable_once_and_starts():
    proc = HqmProcess(
        "proxy",
        "--upstream",
        "127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        env={"HQM_PROXY_MAXBODY": "5"},
    )
    try:
        proc.wait_ready()
    finally:
        proc.terminate()
    warned = [json.loads(line) for line in proc.lines if "HQM_PROXY_MAXBODY" in line]
    assert [(w["level"], w["msg"]) for w in warned] == [
        (
            "warning",
            "environment variable ignored: HQM_PROXY_MAXBODY "
            "(no hqm setting; did you mean HQM_PROXY_MAX_BODY?)",
        )
    ]
