"""Bench reporting: medians over rounds, markdown tables, the machine, JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def median_rows(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """Per config, the median over rounds of every numeric field."""
    out: dict[str, dict] = {}
    for config in rounds[0]:
        keys = [k for k, v in rounds[0][config].items() if isinstance(v, int | float)]
        out[config] = {k: median([r[config][k] for r in rounds if config in r]) for k in keys}
    return out


def fmt(value) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def table(rows: list[dict], columns: Sequence[str], title: str = "") -> str:
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def write_json(bench: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{bench}.json"
    payload = {"bench": bench, "machine": machine(), "when": time.time(), **data}
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def finish(bench: str, data: dict, started: float, note: str = "") -> None:
    """Every bench's last words: the command and its run time, then the JSON file."""
    print(f"\n`{command_line()}` — {time.monotonic() - started:.0f} s{note}")
    path = write_json(bench, {"command": command_line(), **data})
    print(f"wrote {path}")


def command_line() -> str:
    return ".venv/bin/python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
