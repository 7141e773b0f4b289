"""The plugin's state in one scheduler process: one object, one accessor.

SGLang's hooks hand us SGLang objects; what the plugin keeps between calls lives in
one `MementoRuntime`, created when the scheduler starts (`install`, from
`hooks.install_in_scheduler`) and read through `current()`:

- the server's Memento config (`resolver`) and whether its prefill applies masks;
- the Prometheus counters, or a do-nothing stand-in where this rank reports none;
- the admission estimator (cycles the model closed on this server);
- the prefill mask budget;
- per-forward state SGLang's runners cannot carry (`ForwardState`), and the scope of
  SGLang's releases (`ReleaseScope`).

Outside a scheduler (launcher, tokenizer manager, unit tests) `current()` is an
inert runtime: no config, no metrics, an estimator that learns nothing (SGLang's own
estimate applies), no mask budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from memento_sglang.masks import ExtendSegment
from memento_sglang.sglang_plugin.admission import AdmissionEstimator
from memento_sglang.sglang_plugin.metrics import MementoMetrics

if TYPE_CHECKING:
    import torch

    from memento_sglang.resolver import ConfigResolver
    from memento_sglang.sequence import MementoSequence

Plan = list[ExtendSegment]


@dataclass
class ForwardState:
    """What one forward needs and SGLang's hook signatures cannot pass along.

    SGLang's runners copy a ForwardBatch into static buffers (extra attributes do not
    survive), but `ForwardBatch.init_new` and that batch's forward run back to back in
    the scheduler thread: mask plans are staged there, by request id, and read back by
    the attention backend. FlashInfer's flat mask is held while its planner runs.
    """

    plans: dict[str, Plan] = field(default_factory=dict)
    flashinfer_mask: torch.Tensor | None = None

    def plans_for(self, rids: list[str] | None) -> list[Plan | None] | None:
        """The staged plans by batch index, or None when this forward needs no mask."""
        if not self.plans or not rids:
            return None
        plans = [self.plans.get(rid) for rid in rids]
        return plans if any(p is not None for p in plans) else None


@dataclass
class ReleaseScope:
    """Why SGLang is releasing rows right now (nested scopes count).

    `memory`: to make room (`retract_decode`, priority preemption): a released Memento
    row keeps its work in the tree. Other releases (new weights, aborts) must not.
    `bounds_held`: a release that is no failed admission bound (priority preemption):
    the learned cycle bounds stay.
    """

    memory: int = 0
    bounds_held: int = 0

    def for_memory(self) -> AbstractContextManager[None]:
        return self._within("memory")

    def holding_bounds(self) -> AbstractContextManager[None]:
        return self._within("bounds_held")

    @contextmanager
    def _within(self, scope: str) -> Iterator[None]:
        setattr(self, scope, getattr(self, scope) + 1)
        try:
            yield
        finally:
            setattr(self, scope, getattr(self, scope) - 1)


@dataclass
class MementoRuntime:
    """Everything the plugin keeps in one scheduler process."""

    resolver: ConfigResolver | None = None
    masked_prefill: bool = False
    metrics: MementoMetrics = field(default_factory=MementoMetrics.disabled)
    admission: AdmissionEstimator = field(default_factory=AdmissionEstimator)
    #: the server's `prefill_mask_budget` (None: no limit, e.g. outside a scheduler)
    mask_budget: int | None = None
    #: the KV pool's page size (`--page-size`)
    page_size: int = 1
    forward: ForwardState = field(default_factory=ForwardState)
    releases: ReleaseScope = field(default_factory=ReleaseScope)

    def on_retraction(self, seq: MementoSequence | None) -> None:
        """SGLang retracted a request: if it made room for others and the request was
        admitted on the learned bounds, those bounds failed: back off."""
        if self.releases.memory and not self.releases.bounds_held:
            self.admission.on_retraction(seq)


_runtime = MementoRuntime(admission=AdmissionEstimator(learning=False))


def install(runtime: MementoRuntime) -> MementoRuntime:
    """Once per scheduler process, when the scheduler starts."""
    global _runtime
    _runtime = runtime
    return runtime


def current() -> MementoRuntime:
    return _runtime
