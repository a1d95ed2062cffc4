"""The Dockerfile, without a Docker daemon: its structure parsed (dockerfile-parse), its
build context filtered by .dockerignore, and the builder stage's own RUN steps run for
real into a fresh venv, which then works, alone, for uid 1337 as in the final stage."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import hqm
from hqm.config.commands import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: The uid and gid the image and the Kubernetes manifests run as.
IMAGE_UID = 1337
#: A slim Debian Python base named by exact version: python:3.11.11-slim-bookworm.
BASE_IMAGE = re.compile(r"python:(\d+\.\d+\.\d+)-slim-(bookworm|trixie)")
#: What the python base images set PATH to; ENV PATH=...:$PATH extends it.
BASE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Instructions a final stage that only copies a venv in may hold (no RUN: nothing is
#: installed there, so no build toolchain can be).
FINAL_INSTRUCTIONS = {"ARG", "LABEL", "COPY", "ENV", "USER", "EXPOSE", "ENTRYPOINT", "CMD"}
OCI_LABELS = ("title", "description", "version", "licenses", "base.name")
INSTALL_TIMEOUT_S = 300


@dataclass(frozen=True, slots=True)
class Stage:
    base: str
    name: str
    #: (instruction, value) in order, comments left out.
    steps: tuple[tuple[str, str], ...]

    def values(self, instruction: str) -> list[str]:
        return [value for kind, value in self.steps if kind == instruction]

    def pairs(self, instruction: str) -> dict[str, str]:
        """ENV or LABEL as key=value pairs, quotes removed."""
        out = {}
        for value in self.values(instruction):
            for word in shlex.split(value):
                key, _, item = word.partition("=")
                out[key] = item
        return out

    def env(self) -> dict[str, str]:
        """The stage's environment, $PATH expanded from the base image's."""
        out = {}
        for key, value in self.pairs("ENV").items():
            out[key] = value.replace("$PATH", BASE_PATH)
        return out


def _stages() -> list[Stage]:
    parser = DockerfileParser(path=str(DOCKERFILE), env_replace=False)
    stages: list[Stage] = []
    base, name, steps = "", "", []
    for item in parser.structure:
        kind, value = item["instruction"], item["value"]
        if kind == "COMMENT":
            continue
        if kind == "FROM":
            if base:
                stages.append(Stage(base, name, tuple(steps)))
            words = value.split()
            base, name, steps = words[0], (words[2] if len(words) == 3 else ""), []
            assert len(words) in (1, 3) and (len(words) == 1 or words[1].upper() == "AS")
            continue
        steps.append((kind, value))
    stages.append(Stage(base, name, tuple(steps)))
    return stages


STAGES = _stages()
BUILDER = next(s for s in STAGES if s.name == "builder")
FINAL = STAGES[-1]
VENV = BUILDER.env()["VIRTUAL_ENV"]


def _exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(w, str) for w in parsed), value
    return parsed


def test_every_stage_is_the_same_slim_python_named_by_exact_version():
    bases = {stage.base for stage in STAGES}
    assert len(bases) == 1, bases
    match = BASE_IMAGE.fullmatch(bases.pop())
    assert match, f"{STAGES[0].base}: not python:X.Y.Z-slim-<debian>"
    assert Version(match[1]) in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_multi_stage_the_final_stage_only_copies_the_venv():
    assert len(STAGES) >= 2 and FINAL is not BUILDER
    kinds = {kind for kind, _ in FINAL.steps}
    assert kinds <= FINAL_INSTRUCTIONS, f"final stage runs {kinds - FINAL_INSTRUCTIONS}"
    assert FINAL.values("COPY") == [f"--from=builder {VENV} {VENV}"]
    assert FINAL.env()["VIRTUAL_ENV"] == VENV
    assert FINAL.env()["PATH"].split(":")[0] == f"{VENV}/bin"


def test_final_stage_runs_hqm_as_1337_with_the_admin_listener_reachable():
    assert FINAL.values("USER") == [f"{IMAGE_UID}:{IMAGE_UID}"]
    assert [_exec_form(v) for v in FINAL.values("ENTRYPOINT")] == [["hqm"]]
    assert [_exec_form(v) for v in FINAL.values("CMD")] == [["proxy"]]
    env = FINAL.env()
    assert env["HQM_PROXY_ADMIN"] == "0.0.0.0:9090"
    assert env["HQM_WORKER_ADMIN"] == "0.0.0.0:9091"
    listen = COMMANDS["proxy"].option("listen").default.rsplit(":", 1)[1]
    exposed = {int(p) for v in FINAL.values("EXPOSE") for p in v.split()}
    assert exposed == {int(listen), 9090, 9091}


def test_every_hqm_variable_of_the_image_is_an_option():
    known = {n for c in COMMANDS.values() for o in c.options for n in c.env_names(o)}
    for stage in STAGES:
        named = {key for key in stage.env() if key.startswith("HQM_")}
        assert named <= known, f"stage {stage.name or 'final'}: {named - known}"


def test_oci_labels():
    labels = FINAL.pairs("LABEL")
    for key in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{key}"), key
    version_arg = dict(v.split("=", 1) for v in FINAL.values("ARG"))["VERSION"]
    assert labels["org.opencontainers.image.version"] == "$VERSION"
    assert version_arg == hqm.__version__
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]["text"]
    base_name = labels["org.opencontainers.image.base.name"]
    assert base_name == f"docker.io/library/{FINAL.base}"


def test_the_iptables_init_stage_adds_iptables_alone():
    stage = next(s for s in STAGES if s.name == "iptables-init")
    (run,) = stage.values("RUN")
    installs = re.findall(r"apt-get install ([^&]+)", run)
    assert [shlex.split(i) for i in installs] == [["--yes", "--no-install-recommends", "iptables"]]
    assert "rm -rf /var/lib/apt/lists/*" in run
    assert stage.values("COPY") == [f"--from=builder {VENV} {VENV}"]
    assert [_exec_form(v) for v in stage.values("ENTRYPOINT")] == [["hqm"]]


# --- the build context --------------------------------------------------------------


def _pattern(text: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match, plus ** for any directories)."""
    out, i = "", 0
    while i < len(text):
        if text.startswith("**", i):
            out, i = out + ".*", i + 2
        elif text[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif text[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(text[i]), i + 1
    return re.compile(out)


def _ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent
    directories decides; a ``!`` pattern includes again."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for include, pattern in rules:
        if any(pattern.fullmatch(p) for p in prefixes):
            verdict = not include
    return verdict


def _rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        rules.append((include, _pattern(line.removeprefix("!").strip("/"))))
    return rules


def _context() -> list[str]:
    rules = _rules()
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel = Path(dirpath).relative_to(ROOT)
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = (rel / name).as_posix()
            if not _ignored(path, rules):
                out.append(path)
    return sorted(out)


def test_the_context_is_what_the_builder_copies_and_no_more():
    context = _context()
    assert {"pyproject.toml", "setup.cfg", "README.md", "hqm/__init__.py"} <= set(context)
    assert not [p for p in context if "__pycache__" in p or p.endswith(".pyc")]
    assert not [p for p in context if p.split("/")[0] in {".venv", "tests", "k8s", "bench"}]
    copied = []
    for value in BUILDER.values("COPY"):
        *sources, _ = value.split()
        copied += [s.rstrip("/") for s in sources]
    for path in context:
        assert any(path == s or path.startswith(f"{s}/") for s in copied), f"{path}: unused"
    for source in copied:
        assert any(p == source or p.startswith(f"{source}/") for p in context), source
    # Every package the wheel is built from (pyproject's package discovery) is copied.
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for init in ROOT.glob("*/__init__.py"):
        package = init.parent.name
        if any(fnmatch.fnmatch(package, pattern) for pattern in patterns):
            assert package in copied, f"{package}/ is packaged but not copied"


# --- the build, for real --------------------------------------------------------------


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    """A directory uid 1337 can read (pytest's tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="hqm-image-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _as_image_user() -> dict:
    """subprocess arguments that drop to the image's uid/gid when run as root."""
    if os.geteuid() != 0:
        return {}
    return {"user": IMAGE_UID, "group": IMAGE_UID, "extra_groups": []}


def _usable_by_image_user(python: str) -> bool:
    """Whether uid 1337 can run ``python`` and pip can fill a venv of it."""
    if not Path(python).exists():
        return False
    probe = "import sys, venv, pip; sys.exit(sys.version_info < (3, 11))"
    try:
        done = subprocess.run(
            [python, "-c", probe], capture_output=True, timeout=30, **_as_image_user()
        )
    except OSError:
        return False
    return done.returncode == 0


def _build_python() -> tuple[str, bool]:
    """The interpreter the venv is built on, and whether uid 1337 can run it. In the
    image it is /usr/local/bin/python; here the test's own may live under /root."""
    for candidate in ("/usr/local/bin/python3", "/usr/bin/python3", sys.executable):
        if _usable_by_image_user(candidate):
            return candidate, True
    return sys.executable, os.geteuid() != 0


@pytest.fixture(scope="module")
def built_venv(image_root: Path) -> Path:
    """The builder's RUN steps in a copy of the context, with VIRTUAL_ENV pointing into
    image_root; then the context is removed: the final stage has only the venv."""
    python, usable = _build_python()
    if not usable:
        pytest.skip(f"no Python here that uid {IMAGE_UID} can run ({sys.executable})")
    src = image_root / "src"
    for path in _context():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, src / path)
    tools = image_root / "tools"
    tools.mkdir()
    (tools / "python").symlink_to(python)
    venv = image_root / VENV.lstrip("/")
    env = {**os.environ, **BUILDER.env(), "VIRTUAL_ENV": str(venv)}
    env["PATH"] = f"{tools}:{os.environ['PATH']}"
    for run in BUILDER.values("RUN"):
        done = subprocess.run(
            ["sh", "-ec", run],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
        assert done.returncode == 0, f"{run}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    shutil.rmtree(src)  # tools/ stays: the base image's /usr/local/bin/python
    return venv


def _run_in_image(venv: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v.replace(VENV, str(venv)) for k, v in FINAL.env().items()}
    env["PATH"] = f"{venv}/bin:/usr/bin:/bin"
    return subprocess.run(
        [*argv],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        **_as_image_user(),
    )


def test_the_built_venv_alone_runs_hqm_as_uid_1337(built_venv: Path):
    """One test, so that one build serves every check (xdist would build once per
    process for several)."""
    entry = _exec_form(FINAL.values("ENTRYPOINT")[-1])
    hqm_bin = str(built_venv / "bin" / entry[0])
    done = _run_in_image(built_venv, hqm_bin, "--help")
    assert done.returncode == 0, done.stderr
    assert "proxy" in done.stdout and "worker" in done.stdout
    assert not (built_venv / "bin" / "pip").exists(), "pip in the final venv"
    # Compiled at install: a read-only root filesystem costs no compile at each start.
    site = next(built_venv.glob("lib/python*/site-packages"))
    assert list((site / "hqm" / "__pycache__").glob("__init__.*.pyc"))
    # The image's ENV puts the admin listeners where probes and Prometheus reach them.
    for command, port in (("proxy", 9090), ("worker", 9091)):
        done = _run_in_image(
            built_venv,
            hqm_bin,
            *("config", "check", "--json", command),
            *("--upstream", "app:8080", "--redis", "redis://redis:6379/0"),
        )
        assert done.returncode == 0, done.stderr
        admin = next(s for s in json.loads(done.stdout)[command] if s["option"] == "admin")
        assert (admin["value"], admin["source"]) == (f"0.0.0.0:{port}", "env")
    # Root owns the venv: the image's user cannot change the code it runs.
    if os.geteuid() == 0:
        probe = f"open({str(site / 'hqm' / 'planted.py')!r}, 'w')"
        done = _run_in_image(built_venv, str(built_venv / "bin" / "python"), "-c", probe)
        assert done.returncode != 0 and "PermissionError" in done.stderr
