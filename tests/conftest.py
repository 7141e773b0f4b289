"""Shared fixtures: the tiny model, the HF reference, and real CPU servers."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from memento_sglang.config import MementoConfig
from memento_sglang.models.smollm2 import SMOLLM2_MEMENTO_CONFIG, smollm2_model_path
from memento_sglang.models.tiny import SPECIAL_TOKENS, tiny_model_path
from tests.support.client import CHUNKED_MASK_BUDGET
from tests.support.oracle import MementoReference
from tests.support.server import ServerPool, ServerSpec

SERVER_MEMENTO_ON = json.dumps({"enable": True, "mask_delimiters": False})
SMOLLM2_MEMENTO_ON = json.dumps({"enable": True, "mask_delimiters": False, **SMOLLM2_MEMENTO_CONFIG})
CHUNKED_MEMENTO_ON = json.dumps(
    {"enable": True, "mask_delimiters": False, "prefill_mask_budget": CHUNKED_MASK_BUDGET}
)
SERVER_MEMENTO_OFF = json.dumps({"mask_delimiters": False})  # requests opt in

PRESSURE_POOL_TOKENS = 300
POOL = pytest.StashKey["ServerPool | None"]()
START_SECONDS = pytest.StashKey[dict]()
USES_LEFT = pytest.StashKey[Counter]()

SERVERS = [
    # SGLang defaults (overlap scheduler on, radix cache on), our launcher, Memento on, metrics.
    ServerSpec("default", ("--memento-config", SERVER_MEMENTO_ON, "--enable-metrics")),
    # Both off, the stock `python -m sglang.launch_server` + plugin, Memento per request only.
    ServerSpec(
        "no_overlap_no_radix",
        ("--memento-config", SERVER_MEMENTO_OFF, "--disable-overlap-schedule", "--disable-radix-cache"),
        launcher="sglang",
    ),
    # Small prefill chunks: a prompt's closed blocks span several chunks, and a tight mask
    # budget cuts masked chunks smaller still as the prefix grows.
    ServerSpec("chunked", ("--memento-config", CHUNKED_MEMENTO_ON, "--chunked-prefill-size", "16")),
    # SGLang's own retraction test mode: every third decode step retracts a request,
    # which comes back through a (masked) re-prefill and re-compaction.
    ServerSpec("retract", ("--memento-config", SERVER_MEMENTO_ON), env=(("SGLANG_TEST_RETRACT", "1"),)),
    # Real pressure: a KV pool too small for every cached trace (the radix tree evicts by
    # LRU) and for the requests admitted on Memento's estimate (SGLang retracts for real).
    ServerSpec(
        "pressure",
        ("--memento-config", SERVER_MEMENTO_ON, "--enable-metrics"),
        max_total_tokens=PRESSURE_POOL_TOKENS,
    ),
    # Priority preemption on the same small pool: a high-priority request preempts running
    # Memento requests, whose rows keep their work.
    ServerSpec(
        "priority",
        (
            "--memento-config",
            SERVER_MEMENTO_ON,
            "--enable-metrics",
            "--enable-priority-scheduling",
            "--max-running-requests",
            "2",
            "--decode-log-interval",
            "1",
        ),
        max_total_tokens=PRESSURE_POOL_TOKENS,
    ),
    # llguidance instead of xgrammar: the Memento structure as a Lark grammar (`ebnf`).
    ServerSpec("llguidance", ("--memento-config", SERVER_MEMENTO_ON, "--grammar-backend", "llguidance")),
    # outlines: JSON and regex constraints only; the Memento structure is refused per request.
    ServerSpec("outlines", ("--memento-config", SERVER_MEMENTO_ON, "--grammar-backend", "outlines")),
    # Several ranks in one server: our launcher binds each rank to its own cores.
    ServerSpec("dp2", ("--memento-config", SERVER_MEMENTO_ON, "--enable-metrics", "--dp-size", "2")),
    ServerSpec("tp2", ("--memento-config", SERVER_MEMENTO_ON, "--enable-metrics", "--tp-size", "2")),
    # Paged KV: rows stay page-consecutive, partial pages' survivors move; SGLang's paged
    # allocator checks every row's layout (SGLANG_DEBUG_MEMORY_POOL). Overlap on at 16,
    # off at 64 (a page longer than most blocks: most spans fall inside one page), where a
    # mask budget below one page's worth must still let every prompt progress a page.
    ServerSpec(
        "paged16",
        ("--memento-config", SERVER_MEMENTO_ON, "--enable-metrics", "--page-size", "16"),
        env=(("SGLANG_DEBUG_MEMORY_POOL", "1"),),
    ),
    ServerSpec(
        "paged64",
        ("--memento-config", CHUNKED_MEMENTO_ON, "--page-size", "64", "--disable-overlap-schedule"),
        env=(("SGLANG_DEBUG_MEMORY_POOL", "1"),),
    ),
    # The real model of the demo (SmolLM2-135M-Instruct with Memento tokens).
    ServerSpec("smollm2", ("--memento-config", SMOLLM2_MEMENTO_ON), model=smollm2_model_path),
]


@pytest.fixture(scope="session")
def model_path():
    return tiny_model_path()


@pytest.fixture(scope="session")
def tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture(scope="session")
def token_ids(tokenizer):
    """Resolved Memento ids of the tiny model (what the server resolves too)."""
    cfg = MementoConfig(enable=True, mask_delimiters=False)
    return cfg.resolve(tokenizer.get_vocab(), len(tokenizer)).ids


@pytest.fixture(scope="session")
def reference(model_path, tokenizer):
    return MementoReference(model_path, set(tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))))


#: Fixtures that hand a test one server configuration (by name), or one per parameter.
SERVER_FIXTURES = {
    "default_server": "default",
    "plain_server": "no_overlap_no_radix",
    "chunked_server": "chunked",
    "retract_server": "retract",
    "pressure_server": "pressure",
    "priority_server": "priority",
    "llguidance_server": "llguidance",
    "outlines_server": "outlines",
    "smollm2_server": "smollm2",
    "paged16_server": "paged16",
}
PARAMETRIZED_SERVER_FIXTURES = (
    "any_server",
    "masked_server",
    "radix_server",
    "parallel_server",
    "paged_server",
    "unpaged_or_paged_server",
)


def servers_needed(item: pytest.Item) -> list[str]:
    names = [SERVER_FIXTURES[f] for f in item.fixturenames if f in SERVER_FIXTURES]
    params = getattr(item, "callspec", None)
    if params is not None:
        names += [params.params[f] for f in PARAMETRIZED_SERVER_FIXTURES if f in params.params]
    return names


def pytest_collection_modifyitems(session, config, items):
    """Tests without servers run first, while the servers start in the background; tests
    that start their own engines run last, once the shared servers are retired."""

    def phase(item: pytest.Item) -> int:
        if item.get_closest_marker("server") is None:
            return 0
        return 1 if servers_needed(item) else 2

    items.sort(key=phase)


def pytest_collection_finish(session):
    """Start the servers the selected tests need, in the order they need them."""
    planned = list(dict.fromkeys(name for item in session.items for name in servers_needed(item)))
    if planned and not session.config.option.collectonly:
        pool = session.config.stash[POOL] = ServerPool(SERVERS, tiny_model_path())
        session.config.stash[START_SECONDS] = pool.start_seconds
        uses = Counter(name for item in session.items for name in set(servers_needed(item)))
        session.config.stash[USES_LEFT] = uses
        pool.plan(planned)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """A server no later test needs is checked and stopped at once (memory)."""
    uses_left = item.config.stash.get(USES_LEFT, None)
    pool = item.config.stash.get(POOL, None)
    if uses_left is None or pool is None:
        return
    for name in set(servers_needed(item)):
        uses_left[name] -= 1
        if uses_left[name] == 0:
            pool.retire(name)


def pytest_unconfigure(config):
    """Stop servers the session started but no test closed (an interrupted run)."""
    pool = config.stash.get(POOL, None)
    if pool is not None:
        pool.stop_all()


def pytest_terminal_summary(terminalreporter, config):
    started = config.stash.get(START_SECONDS, {})
    if started:
        terminalreporter.write_sep("-", "server start-up (seconds to ready, servers starting at once)")
        for name, (seconds, concurrent) in started.items():
            terminalreporter.write_line(f"{name}: {seconds:.0f} s ({concurrent} at once)")


@pytest.fixture(scope="session")
def server_pool(request, model_path):
    """The session's servers; at the end, a server that leaked or broke an invariant fails it."""
    pool = request.config.stash.get(POOL, None)
    if pool is None:  # a test that collection did not see needing a server
        pool = request.config.stash[POOL] = ServerPool(SERVERS, model_path)
        request.config.stash[START_SECONDS] = pool.start_seconds
    yield pool
    request.config.stash[POOL] = None
    pool.close()


@pytest.fixture(scope="session")
def default_server(server_pool):
    return server_pool.get("default")


@pytest.fixture(scope="session")
def plain_server(server_pool):
    return server_pool.get("no_overlap_no_radix")


@pytest.fixture(params=["default", "no_overlap_no_radix", "paged16", "paged64"])
def any_server(request, server_pool):
    return server_pool.get(request.param)


@pytest.fixture(params=["dp2", "tp2"])
def parallel_server(request, server_pool):
    """A server with two ranks: data parallel (two schedulers) or tensor parallel (two
    shards of every layer)."""
    return server_pool.get(request.param)


@pytest.fixture(params=["default", "no_overlap_no_radix", "chunked", "paged16", "paged64"])
def masked_server(request, server_pool):
    return server_pool.get(request.param)


@pytest.fixture(params=["default", "chunked", "paged16", "paged64"])
def radix_server(request, server_pool):
    return server_pool.get(request.param)


@pytest.fixture(params=["paged16", "paged64"])
def paged_server(request, server_pool):
    return server_pool.get(request.param)


@pytest.fixture(params=["default", "paged16"])
def unpaged_or_paged_server(request, server_pool):
    return server_pool.get(request.param)


@pytest.fixture(scope="session")
def paged16_server(server_pool):
    return server_pool.get("paged16")


@pytest.fixture(scope="session")
def chunked_server(server_pool):
    return server_pool.get("chunked")


@pytest.fixture(scope="session")
def pressure_server(server_pool):
    return server_pool.get("pressure")


@pytest.fixture(scope="session")
def priority_server(server_pool):
    return server_pool.get("priority")


@pytest.fixture(scope="session")
def retract_server(server_pool):
    return server_pool.get("retract")


@pytest.fixture(scope="session")
def llguidance_server(server_pool):
    return server_pool.get("llguidance")


@pytest.fixture(scope="session")
def outlines_server(server_pool):
    return server_pool.get("outlines")


@pytest.fixture(scope="session")
def smollm2_server(server_pool):
    return server_pool.get("smollm2")
