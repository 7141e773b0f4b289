"""Several Memento servers behind SGLang's router: a routing key per Memento state, and
the router's command line.

A fork (`s.fork(n)`, `n > 1`, a resubmitted trace) only skips its prefill when it
lands on the server whose radix tree holds the state it continues: the prompt, the
closed blocks and their mementos, compacted. SGLang's router (`sglang-router`)
cannot see that state; its `cache_aware` policy guesses it from the request text and
stops guessing once the load gap between workers grows (see docs/scale-out.md). Its
`manual` policy keeps every request with the same `X-SMG-Routing-Key` header on one
worker. `routing_key` names the state a fork continues, so all forks of one state
share a worker while different states spread over the workers.

Pure Python: no SGLang, no tokenizer, no router import.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections.abc import Sequence

from memento_sglang.constants import SUMMARY_END

#: the request header the router's `manual` policy routes on (sticky per value)
ROUTING_KEY_HEADER = "X-SMG-Routing-Key"
#: `--policy` values of sglang-router 0.3.2's HTTP router
POLICIES = ("cache_aware", "round_robin", "random", "power_of_two", "manual")

_KEY_BYTES = 8  # 16 hex characters: collisions only merge two states onto one worker


def _closed_prefix_len(reasoning: Sequence[int] | str, summary_end: int | str) -> int:
    """Length of the reasoning up to and including its last closed memento (0: none closed)."""
    if isinstance(reasoning, str):
        assert isinstance(summary_end, str)
        end = reasoning.rfind(summary_end)
        return 0 if end < 0 else end + len(summary_end)
    for i in range(len(reasoning) - 1, -1, -1):
        if reasoning[i] == summary_end:
            return i + 1
    return 0


def routing_key(prompt_ids: Sequence[int], reasoning_ids: Sequence[int] = (), *, summary_end_id: int) -> str:
    """A short name for the Memento state a request continues, for `ROUTING_KEY_HEADER`.

    The state is the prompt plus the reasoning up to its last closed memento
    (`summary_end_id`): what a server's Memento radix tree holds once that memento
    closed, and what every fork of it reads from the tree. The open block and anything
    after it (a fork's own question, its sampled tokens) are not part of it, so every
    fork of one state gets the same key. The closed blocks are hashed too: a memento's
    KV depends on the block it summarises. With no memento closed, the key names the
    prompt (every sample of one problem shares a worker). Delimiters inside the prompt
    never cut it: only `reasoning_ids` is searched.
    """
    state = array("q", prompt_ids)
    state.append(-1)  # separator: the same ids split differently are a different state
    state.extend(reasoning_ids[: _closed_prefix_len(reasoning_ids, summary_end_id)])
    return hashlib.blake2b(state.tobytes(), digest_size=_KEY_BYTES).hexdigest()


def text_routing_key(prompt: str, reasoning: str = "") -> str:
    """`routing_key` for text (a chat client that holds the prompt and reasoning as text,
    with the Memento delimiters kept): the prompt plus the reasoning up to its last
    `<|summary_end|>`."""
    state = prompt + "\0" + reasoning[: _closed_prefix_len(reasoning, SUMMARY_END)]
    return hashlib.blake2b(state.encode(), digest_size=_KEY_BYTES).hexdigest()


def router_command(
    worker_urls: Sequence[str],
    policy: str,
    port: int,
    prometheus_port: int,
    extra: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    prometheus_host: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """`python -m sglang_router.launch_router` in front of `worker_urls`.

    The router's Prometheus exporter always gets an explicit port and host: its default,
    port 29000 on 0.0.0.0, collides as soon as two routers share a machine. `extra` is
    passed through (e.g. `--assignment-mode min_group`, `--balance-abs-threshold 8`).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown router policy {policy!r}; sglang-router offers {', '.join(POLICIES)}")
    if not worker_urls:
        raise ValueError("the router needs at least one worker URL")
    return [
        python, "-m", "sglang_router.launch_router",
        "--host", host,
        "--port", str(port),
        "--worker-urls", *worker_urls,
        "--policy", policy,
        "--prometheus-host", prometheus_host or host,
        "--prometheus-port", str(prometheus_port),
        *extra,
    ]  # fmt: skip
