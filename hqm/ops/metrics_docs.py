"""The README's table of metrics, made from the metrics the processes register.

``python -m hqm.ops.metrics_docs README.md`` rewrites the block between
``<!-- metrics -->`` and ``<!-- /metrics -->``; a test checks that the README holds
exactly what this module makes, and that the Grafana dashboard queries only what is
exported.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from hqm.ops.metrics import ProxyMetrics, QueueMetrics, WorkerMetrics

_BLOCK = re.compile(r"(<!-- metrics -->\n)(.*?)(<!-- /metrics -->)", re.S)
#: The series a family of each type is exported as (``_created`` ones are disabled).
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Family:
    name: str
    type: str
    labels: tuple[str, ...]
    help: str

    @property
    def series(self) -> tuple[str, ...]:
        """The names a PromQL query uses for it."""
        return tuple(self.name + suffix for suffix in _SUFFIXES[self.type])


def families() -> list[Family]:
    """Every metric family hqm exports (proxy, worker, queue gauges), in their order."""
    registry = CollectorRegistry()
    out = []
    for part in (ProxyMetrics(registry), WorkerMetrics(registry), QueueMetrics(registry)):
        for metric in vars(part).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            (described,) = metric.describe()
            # (prometheus_client has no public accessor for the label names of a metric
            # that has no children yet)
            labels = tuple(getattr(metric, "_labelnames", ()))
            out.append(
                Family(
                    name=described.name,
                    type=described.type,
                    labels=labels,
                    help=described.documentation,
                )
            )
    return out


def exported_series() -> set[str]:
    return {name for family in families() for name in family.series}


def markdown_table() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for family in families():
        name = family.series[0] if family.type == "counter" else family.name
        labels = ", ".join(f"`{label}`" for label in family.labels) or "-"
        rows.append(f"| `{name}` | {family.type} | {labels} | {family.help} |")
    return "\n".join(rows) + "\n"


def rewrite(text: str) -> str:
    return _BLOCK.sub(lambda m: m.group(1) + markdown_table() + m.group(3), text)


def main(argv: list[str]) -> int:
    for name in argv or ["README.md"]:
        path = Path(name)
        path.write_text(rewrite(path.read_text()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
