"""Memento counters on SGLang's Prometheus endpoint (`--enable-metrics`, `GET /metrics`).

Created in the scheduler process next to SGLang's own collector, with its labels;
SGLang's multiprocess registry serves them from the HTTP process.

    sglang:memento_blocks_closed_total    mementos closed (prompt blocks included)
    sglang:memento_blocks_evicted_total   blocks compacted out of KV rows
    sglang:memento_tokens_evicted_total   KV slots removed from rows by compaction
    sglang:memento_kv_tokens_moved_total  survivors of partial pages whose KV paged compaction
                                          moved (`--page-size` > 1; 0 with page size 1)
    sglang:memento_restarts_total         restart_mode re-prefills
    sglang:memento_admission_bound_tokens_total   growth bounds reserved at admission, and
    sglang:memento_admission_growth_tokens_total  the growth that finished requests really had
                                          (their gap is the admission estimate's error)
    sglang:memento_retracted_output_tokens_total  output tokens of retracted requests (any
                                          request), which their re-prefill recomputes
    sglang:memento_kv_tokens_saved        KV tokens the running batch does not hold
                                          thanks to eviction (sum over its requests)
    sglang:memento_decode_steps_total     decode steps the plugin prepared
    sglang:memento_compaction_seconds_total  scheduler time spent in compaction before them
                                          (host time: GPU work it launches is asynchronous)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any


class _Inert:
    """Stands in for a counter or gauge on a rank that reports no metrics."""

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass


_INERT = _Inert()


@dataclass(frozen=True)
class MementoMetrics:
    """The plugin's counters; `disabled()` has the same fields and records nothing, so
    callers never check whether metrics are on."""

    enabled: bool
    blocks_closed: Any
    blocks_evicted: Any
    tokens_evicted: Any
    kv_tokens_moved: Any
    restarts: Any
    kv_tokens_saved: Any
    decode_steps: Any
    compaction_seconds: Any
    tree_tokens_evicted: Any
    blocks_reused: Any
    prompt_tokens_reused: Any
    retracted_output_tokens: Any
    admission_bound_tokens: Any
    admission_growth_tokens: Any

    @classmethod
    def create(cls, labels: dict[str, Any]) -> MementoMetrics:
        # imported late: SGLang sets PROMETHEUS_MULTIPROC_DIR before its processes start
        from prometheus_client import Counter, Gauge

        def counter(name: str, doc: str) -> Any:
            return Counter(f"sglang:memento_{name}", doc, labelnames=list(labels)).labels(**labels)

        saved = Gauge(
            "sglang:memento_kv_tokens_saved",
            "KV tokens the running batch does not hold thanks to Memento eviction.",
            labelnames=list(labels),
            multiprocess_mode="mostrecent",
        ).labels(**labels)
        return cls(
            enabled=True,
            blocks_closed=counter("blocks_closed", "Mementos closed (prompt blocks included)."),
            blocks_evicted=counter("blocks_evicted", "Blocks compacted out of KV rows."),
            tokens_evicted=counter("tokens_evicted", "KV slots removed from rows by compaction."),
            kv_tokens_moved=counter(
                "kv_tokens_moved", "Tokens whose KV paged compaction moved (partial pages' survivors)."
            ),
            restarts=counter("restarts", "restart_mode re-prefills."),
            kv_tokens_saved=saved,
            decode_steps=counter("decode_steps", "Decode steps prepared by the plugin."),
            compaction_seconds=counter("compaction_seconds", "Scheduler time in compaction."),
            tree_tokens_evicted=counter(
                "tree_tokens_evicted", "Block KV slots the radix tree freed when their memento closed."
            ),
            blocks_reused=counter("blocks_reused", "Closed prompt blocks skipped through a radix-cache hit."),
            prompt_tokens_reused=counter(
                "prompt_tokens_reused", "Logical prompt tokens not prefilled thanks to a radix-cache hit."
            ),
            retracted_output_tokens=counter(
                "retracted_output_tokens", "Output tokens of retracted requests, recomputed on re-prefill."
            ),
            admission_bound_tokens=counter(
                "admission_bound_tokens", "Memento growth bounds reserved at admission (finished requests)."
            ),
            admission_growth_tokens=counter(
                "admission_growth_tokens", "Live KV growth after admission of the same finished requests."
            ),
        )

    @classmethod
    def disabled(cls) -> MementoMetrics:
        names = [f.name for f in fields(cls) if f.name != "enabled"]
        return cls(enabled=False, **dict.fromkeys(names, _INERT))

    @classmethod
    def for_scheduler(cls, scheduler: Any) -> MementoMetrics:
        """The counters of a scheduler that reports metrics (its stats rank only)."""
        collector = getattr(scheduler, "metrics_collector", None)
        context = getattr(scheduler, "metrics_collector_context", None)
        reporting = context is not None and context.current_scheduler_metrics_enabled  # one rank of TP
        if collector is None or not reporting:
            return cls.disabled()
        return cls.create(dict(collector.labels))

    @contextmanager
    def compaction_timer(self, *, count_step: bool = True) -> Iterator[None]:
        """Time compaction (nothing to do when metrics are off); `count_step`: a decode step's."""
        if not self.enabled:
            yield
            return
        start = time.perf_counter()
        yield
        self.compaction_seconds.inc(time.perf_counter() - start)
        if count_step:
            self.decode_steps.inc()
