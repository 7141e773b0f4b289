"""A CPU server with several ranks: one core set per rank, no NCCL for tensor parallel."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from memento_sglang.cpu import (
    NCCL_PATH_ENV,
    NO_NCCL,
    THREADS_BIND_ENV,
    core_groups,
    parallel_environment,
    rank_memory_fraction,
)
from memento_sglang.sglang_plugin.cpu_threads import rank_cores


def _expand(group: str) -> list[int]:
    cores = []
    for part in group.split(","):
        first, _, last = part.partition("-")
        cores += range(int(first), int(last or first) + 1)
    return cores


@given(st.integers(1, 12), st.sets(st.integers(0, 63), min_size=1, max_size=32))
def test_every_rank_gets_cores_and_no_core_is_left_out(ranks, cores):
    groups = [_expand(g) for g in core_groups(ranks, sorted(cores)).split("|")]
    assert len(groups) == ranks and all(groups)
    used = [c for g in groups for c in g]
    assert set(used) == cores
    if ranks <= len(cores):  # disjoint, nearly equal sets
        assert len(used) == len(cores)
        assert max(map(len, groups)) - min(map(len, groups)) <= 1


def test_the_bind_format_is_sglangs():
    assert core_groups(2, [0, 1]) == "0|1"
    assert core_groups(2, list(range(16))) == "0-7|8-15"
    assert core_groups(4, [0, 1]) == "0|1|0|1"  # more ranks than cores: they share
    assert core_groups(2, [0, 2, 3, 5]) == "0,2|3,5"


def test_several_ranks_are_bound_and_tensor_parallel_skips_nccl():
    assert parallel_environment(1, 1, 1, env={}) == {}
    dp = parallel_environment(1, 2, 1, env={})
    assert dp.keys() == {THREADS_BIND_ENV} and len(dp[THREADS_BIND_ENV].split("|")) == 2
    tp = parallel_environment(2, 1, 1, env={})
    assert tp[NCCL_PATH_ENV] == NO_NCCL and not os.path.exists(NO_NCCL)
    assert len(parallel_environment(2, 2, 1, env={})[THREADS_BIND_ENV].split("|")) == 4


def test_the_users_settings_win():
    mine = {THREADS_BIND_ENV: "0-3|4-7", NCCL_PATH_ENV: "/opt/nccl/libnccl.so.2"}
    assert parallel_environment(2, 1, 1, env=mine) == {}


@given(st.integers(1, 8), st.sets(st.integers(0, 63), min_size=1, max_size=32))
def test_a_rank_reads_back_its_own_group(ranks, cores):
    bind = core_groups(ranks, sorted(cores))
    groups = [rank_cores(bind, r) for r in range(ranks)]
    assert [c for g in groups for c in g] == [c for group in bind.split("|") for c in _expand(group)]
    assert set().union(*groups) == cores


def test_ranks_split_the_memory_unless_the_user_sized_the_pool():
    assert rank_memory_fraction(1, 1, pool_sized=False) is None
    assert rank_memory_fraction(2, 1, pool_sized=False) == 0.4
    assert rank_memory_fraction(4, 1, pool_sized=False) == 0.2
    assert rank_memory_fraction(4, 2, pool_sized=False) == 0.4  # SGLang already splits by node
    assert rank_memory_fraction(2, 2, pool_sized=False) is None  # a node's memory each
    assert rank_memory_fraction(2, 1, pool_sized=True) is None
