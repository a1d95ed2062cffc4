"""Which queues a worker consumes, and which one its next claims go to.

Two policies (docs/architecture.md §5):

- strict priority, the default: the queues in the order given, every claim from the
  first one that has work;
- weights (``reports=3,default=1``): while several queues have work their claims are
  shared in proportion to the weights; a queue without work takes no share (the
  others get it), and one that has work again starts level with the others, so it
  neither starves them catching up nor is starved.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Queues one worker consumes: each costs its own connections and, while it is empty,
#: a blocking read of its own.
MAX_QUEUES = 16
#: Largest weight: a share finer than a thousandth of the claims is noise.
MAX_WEIGHT = 1000
#: A queue name: at most this long, like any name option.
MAX_NAME_LEN = 100


@dataclass(frozen=True, slots=True)
class QueueShare:
    name: str
    #: Its share of the claims (weights policy); 1 under strict priority.
    weight: int = 1


@dataclass(frozen=True, slots=True)
class QueueSet:
    """The queues of ``--queue``, in the order given."""

    shares: tuple[QueueShare, ...]
    #: False: strict priority in the order given; True: claims shared by weight.
    weighted: bool = False

    @classmethod
    def single(cls, name: str) -> QueueSet:
        return cls((QueueShare(name),))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(share.name for share in self.shares)

    @property
    def weights(self) -> tuple[int, ...] | None:
        """None under strict priority."""
        return tuple(share.weight for share in self.shares) if self.weighted else None

    def __str__(self) -> str:
        if not self.weighted:
            return ",".join(self.names)
        return ",".join(f"{share.name}={share.weight}" for share in self.shares)


def check_queue_name(name: str) -> str:
    """A queue name as a single-queue option takes it (ValueError otherwise)."""
    if not name.strip():
        raise ValueError("must not be empty")
    if len(name) > MAX_NAME_LEN or any(ord(c) < 32 for c in name):
        raise ValueError(f"must be printable and at most {MAX_NAME_LEN} characters")
    if "," in name or "=" in name:
        raise ValueError(
            f"one queue name, without ',' or '=' (several queues, NAME=WEIGHT, are for "
            f"`hqm worker`), got {name!r}"
        )
    return name


def _items(raw: Any) -> list[str]:
    parts = [raw] if isinstance(raw, str) else raw
    if not isinstance(parts, list | tuple) or not all(isinstance(p, str) for p in parts):
        raise ValueError(f"expected a queue name or a list of them, got {raw!r}")
    items = [item.strip() for part in parts for item in part.split(",")]
    if not items or any(not item for item in items):
        raise ValueError(f"an empty queue name in {raw!r}")
    return items


def parse_queue_set(raw: Any) -> QueueSet:
    """``NAME``, or several (a list, or one text with commas), each ``NAME`` or
    ``NAME=WEIGHT``. Without any weight: strict priority in the order given. With
    weights, a queue without one after a weighted one weighs 1 (``reports=3,default``);
    one before the first weight is ambiguous (priority or weight 1?) and refused."""
    shares: list[QueueShare] = []
    weighted = False
    for item in _items(raw):
        name, sep, weight_text = item.partition("=")
        name = check_queue_name(name.strip())
        if any(share.name == name for share in shares):
            raise ValueError(f"queue {name!r} is given twice")
        weight = 1
        if sep:
            weight_text = weight_text.strip()
            if not weight_text.isdigit() or not 1 <= int(weight_text) <= MAX_WEIGHT:
                raise ValueError(
                    f"the weight of {name!r} must be an integer 1-{MAX_WEIGHT}, got {weight_text!r}"
                )
            weight = int(weight_text)
            if not weighted and shares:
                raise ValueError(
                    f"{shares[0].name!r} has no weight but {name!r} after it has one: give "
                    "every queue a weight (NAME=WEIGHT), or none for strict priority"
                )
            weighted = True
        shares.append(QueueShare(name, weight))
    if len(shares) > MAX_QUEUES:
        raise ValueError(f"at most {MAX_QUEUES} queues, got {len(shares)}")
    return QueueSet(tuple(shares), weighted)


class ClaimOrder:
    """How many of the free slots to claim from which queue.

    Weights are kept as virtual time (Start-time Fair Queueing): a queue's clock
    advances by 1/weight per entry claimed from it; each free slot goes to the queue
    with work whose clock would be lowest after taking it.
    """

    def __init__(self, names: Sequence[str], weights: Sequence[int] | None = None) -> None:
        self._names = tuple(names)
        self._weights = dict(zip(self._names, weights or [1] * len(self._names), strict=True))
        self.weighted = weights is not None
        self._clock = dict.fromkeys(self._names, 0.0)

    def split(self, free: int, ready: Sequence[str]) -> list[tuple[str, int]]:
        """``free`` slots among the queues that have work, ``ready`` (in table order)."""
        if free <= 0 or not ready:
            return []
        if not self.weighted:
            return [(ready[0], free)]
        taken = dict.fromkeys(ready, 0)
        for _ in range(free):
            name = min(ready, key=lambda n: self._clock[n] + (taken[n] + 1) / self._weights[n])
            taken[name] += 1
        return [(name, count) for name, count in taken.items() if count]

    def claimed(self, name: str, count: int) -> None:
        self._clock[name] += count / self._weights[name]

    def resumed(self, name: str, busy: Iterable[str]) -> None:
        """``name`` has work again: it starts level with the queues that kept theirs."""
        clocks = [self._clock[other] for other in busy if other != name]
        if clocks:
            self._clock[name] = max(self._clock[name], min(clocks))
