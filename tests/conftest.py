"""Shared fixtures: the tiny model, the HF reference, and real CPU servers."""

from __future__ import annotations

import json

import pytest
from support.oracle import MementoReference
from support.server import ServerPool, ServerSpec

from memento_sglang.config import MementoConfig
from memento_sglang.models.smollm2 import SMOLLM2_MEMENTO_CONFIG, smollm2_model_path
from memento_sglang.models.tiny import SPECIAL_TOKENS, tiny_model_path

SERVER_MEMENTO_ON = json.dumps({"enable": True, "mask_delimiters": False})
SMOLLM2_MEMENTO_ON = json.dumps({"enable": True, "mask_delimiters": False, **SMOLLM2_MEMENTO_CONFIG})
SERVER_MEMENTO_OFF = json.dumps({"mask_delimiters": False})  # requests opt in

SERVERS = [
    # SGLang defaults (overlap scheduler on, radix cache on), our launcher, Memento on, metrics.
    ServerSpec("default", ("--memento-config", SERVER_MEMENTO_ON, "--enable-metrics")),
    # Both off, the stock `python -m sglang.launch_server` + plugin, Memento per request only.
    ServerSpec(
        "no_overlap_no_radix",
        ("--memento-config", SERVER_MEMENTO_OFF, "--disable-overlap-schedule", "--disable-radix-cache"),
        launcher="sglang",
    ),
    # Small prefill chunks: a prompt's closed blocks span several chunks.
    ServerSpec("chunked", ("--memento-config", SERVER_MEMENTO_ON, "--chunked-prefill-size", "16")),
    # SGLang's own retraction test mode: every third decode step retracts a request,
    # which comes back through a (masked) re-prefill and re-compaction.
    ServerSpec("retract", ("--memento-config", SERVER_MEMENTO_ON), env=(("SGLANG_TEST_RETRACT", "1"),)),
    # A KV pool too small for every cached trace: the radix tree evicts under pressure.
    ServerSpec("pressure", ("--memento-config", SERVER_MEMENTO_ON, "--enable-metrics"), max_total_tokens=300),
    # llguidance instead of xgrammar: the Memento structure as a Lark grammar (`ebnf`).
    ServerSpec("llguidance", ("--memento-config", SERVER_MEMENTO_ON, "--grammar-backend", "llguidance")),
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


@pytest.fixture(scope="session")
def server_pool(model_path):
    pool = ServerPool(SERVERS, model_path)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def default_server(server_pool):
    return server_pool.get("default")


@pytest.fixture(scope="session")
def plain_server(server_pool):
    return server_pool.get("no_overlap_no_radix")


@pytest.fixture(params=["default", "no_overlap_no_radix"])
def any_server(request, server_pool):
    return server_pool.get(request.param)


@pytest.fixture(params=["default", "no_overlap_no_radix", "chunked"])
def masked_server(request, server_pool):
    return server_pool.get(request.param)


@pytest.fixture(scope="session")
def retract_server(server_pool):
    return server_pool.get("retract")
