"""What an operator gives hqm besides flags: the --config file's bytes and the HQM_*
environment. Every input error is one line naming where it came from, exit 2, never a
traceback (issue 20, items 1, 2 and 7). Real processes, as a shell sees them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: The environment of the host, less every hqm setting: each test gives its own.
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith(("HQM_", "OPENHQM_"))}
REDIS = "redis://127.0.0.1:1/0"


def hqm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hqm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**CLEAN, **(env or {})},
    )


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
