"""Scheduler side, output streaming: `meta_info["memento"]` for every request."""

from __future__ import annotations

from typing import Any

from memento_sglang.sglang_plugin.compaction import observe_row
from memento_sglang.sglang_plugin.request_state import synced


def memento_streamer_class(base: type) -> type:
    """SGLang's output streamer plus `customized_info["memento"]` per request."""

    class MementoOutputStreamer(base):
        has_additional_customized_info = True

        def build_additional_customized_info(self, reqs: list[Any]) -> dict:
            info = super().build_additional_customized_info(reqs)
            seqs = [synced(r) for r in reqs]
            for req, seq in zip(reqs, seqs, strict=True):
                if seq is not None:
                    observe_row(req, seq)
            if any(s is not None for s in seqs):
                info["memento"] = [None if s is None else s.stats().model_dump() for s in seqs]
            return info

    MementoOutputStreamer.__qualname__ = f"Memento{base.__qualname__}"
    return MementoOutputStreamer
