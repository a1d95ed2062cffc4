"""The one table of protocol limits and timeouts, each with the reason for its value.

Flags override the defaults through :class:`Limits`; nothing else in the code base
hard-codes a size or a timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB

#: Request line + header block. Envoy allows 60 KiB, nginx 8-32 KiB; 32 KiB fits large
#: cookies and JWTs while bounding what a slow-loris client can make us hold.
MAX_HEADER_BYTES = 32 * KIB
#: Largest request body stored in the queue. Queue entries live in Redis memory, so the
#: default is small and explicit; raise it with --max-body.
MAX_BODY_BYTES = 10 * MIB
#: Largest app response body recorded (--max-response); bigger answers are stored as a
#: 502 error record. A worker holds an answer whole until it is recorded, so this and
#: --max-inflight-bytes size its memory (README "Memory"): 16 MiB, with the budget
#: below, fits the 256 MiB limit of the shipped manifests (k8s/base); the original
#: OpenHQM's own default is 10 MiB.
MAX_RESPONSE_BYTES = 16 * MIB
#: Response bytes one process holds at once (--max-inflight-bytes): results being
#: streamed to clients, wait-mode answers, answers a worker is receiving. The proxy
#: answers 503 beyond it; the worker reads and claims less. Two maximum answers: a
#: worker holds ~3 copies of each answer in hand while it records it, so its RSS is
#: baseline + 3 x (this + --max-response) (bench/memory_budget.py): 43 + 144 MiB,
#: within the manifests' 256 MiB.
MAX_INFLIGHT_BYTES = 32 * MIB
#: A stored result is read from the queue and written to its client in pieces of this
#: size (GETRANGE), each charged to the budget while in hand: one socket write's worth
#: (the write buffer's high-water mark), so a reader holds one piece, not the result.
RESULT_CHUNK_BYTES = 256 * KIB
#: Bytes the embedded queue holds, requests and results together (--max-queue-bytes):
#: beyond it, 503 queue full. Without a bound its memory grows with traffic until the
#: results' TTL; 32 MiB keeps an embedded proxy (its worker included) within 256 MiB.
MAX_QUEUE_BYTES = 32 * MIB
#: Time for a client to send a full request head once it started one (slow-loris bound).
HEADER_TIMEOUT_S = 10.0
#: Time for the rest of a request body to arrive once the head is in.
BODY_TIMEOUT_S = 30.0
#: A client that takes nothing of a streamed answer (a stored result, a pass-through
#: answer) for this long while our send buffer is full is cut off: it would otherwise
#: hold its share of --max-inflight-bytes for ever. nginx's send_timeout is 60 s.
SEND_TIMEOUT_S = 60.0
#: Idle keep-alive connection lifetime; Envoy's default idle timeout is 1 h, nginx 75 s.
IDLE_TIMEOUT_S = 75.0
#: Default hold for wait mode when the route says `wait` without a number.
WAIT_S = 30.0
#: Cap on `Prefer: wait=N`; Knative's queue-proxy holds up to its revision timeout.
MAX_WAIT_S = 60.0
#: Retry-After for 202 (poll again) and 503 (queue full or down) answers.
RETRY_AFTER_S = 1
#: Bytes queued for a client before we stop reading from it (writes back up).
WRITE_HIGH_WATER = 256 * KIB
#: After an error answer, how long the rest of a request is read and discarded before
#: closing (nginx's "lingering close"): closing with unread input sends a TCP RST,
#: which can destroy the error answer before the client reads it.
LINGER_TIMEOUT_S = 2.0
#: Upstream connect timeout; a local app that does not accept in 5 s is down.
CONNECT_TIMEOUT_S = 5.0
#: Upstream response timeout, first byte to last.
READ_TIMEOUT_S = 60.0
#: Keep-alive connections kept per upstream by the client pool.
POOL_SIZE = 64
#: A pooled connection to the app idle this long is closed rather than reused: below
#: the shortest common server keep-alive (gunicorn 2 s; Node, uvicorn, Apache 5 s), so
#: we, not the app, close idle connections and no request races the app's close.
UPSTREAM_IDLE_TIMEOUT_S = 1.0
#: A reused connection closed before any byte of an answer within this long of the
#: write raced the app's idle close (the FIN was on its way: well under a round trip
#: plus a loop turn); closed later, the app had taken the request and died on it.
STALE_WINDOW_S = 0.25
#: Retire a connection this long before the app's own ``Keep-Alive: timeout=N``.
KEEP_ALIVE_MARGIN_S = 0.5
#: Time SIGTERM gives in-flight requests to finish.
DRAIN_TIMEOUT_S = 30.0
#: Wait-mode clients still held this long before the drain's end are answered as async
#: (202 + Location) and their connections closed: writing ~300 bytes and closing takes
#: milliseconds, and the drain as a whole stays within --drain-timeout.
DRAIN_ANSWER_S = 0.5
#: After an enqueue failed, /readyz fails this long even when its write probe passes
#: (unless an enqueue succeeds first): every failure starts it again, so a probe during
#: a run of failing enqueues fails whatever the probe's write meets; once traffic is
#: gone (the pod out of rotation), the write probe alone decides within seconds.
READY_HOLD_S = 5.0
#: How long a finished result stays collectable.
RESULT_TTL_S = 24 * 3600
#: How long an Idempotency-Key is remembered: 24 h, as Stripe keeps keys, and equal to
#: the default result TTL, so a resend within the window can still read the first
#: request's answer (a longer window would hand out ids whose results expired).
IDEMPOTENCY_TTL_S = 24 * 3600.0
#: Longest Idempotency-Key, in characters: 255, as Stripe's (a UUID has 36).
MAX_IDEMPOTENCY_KEY_CHARS = 255
#: Spent replay tokens the embedded queue remembers at once (each until it expires,
#: hqm.proto.replay_token.REMEMBER_S): about 100 bytes each, 10 MB at most. That is a
#: sustained 300 replays/s through one proxy; beyond it a replay gets 503 (the worker
#: retries it later with a new token) rather than a token being forgotten while valid.
MAX_SPENT_TOKENS = 100_000
#: Furthest HQM-Delay / HQM-Not-Before: 30 days, Google Cloud Tasks' bound on a task's
#: schedule time. A scheduled request waits in Redis memory; further out a scheduler
#: is the better tool, and a typo ("3600000") is refused instead of kept for months.
MAX_DELAY_S = 30 * 24 * 3600.0
#: Largest --config file read: 1 MiB, the most a Kubernetes ConfigMap holds (where the
#: file usually comes from). A longer file is no configuration; ``--config /dev/zero``
#: is refused after 1 MiB instead of filling memory.
MAX_CONFIG_BYTES = 1024 * 1024
#: Shortest HQM-Replay key: 32 bytes, the output size of the HMAC's SHA-256 (RFC 2104
#: section 3: a key shorter than that weakens the MAC). ``head -c 32 /dev/urandom |
#: base64`` (44 characters) makes one.
MIN_REPLAY_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-listener limits; defaults are the constants above."""

    max_header_bytes: int = MAX_HEADER_BYTES
    max_body_bytes: int = MAX_BODY_BYTES
    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    send_timeout_s: float = SEND_TIMEOUT_S
    idle_timeout_s: float = IDLE_TIMEOUT_S
    write_high_water: int = WRITE_HIGH_WATER
    linger_timeout_s: float = LINGER_TIMEOUT_S
