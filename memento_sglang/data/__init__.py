"""CoT -> Memento training data: split, score, segment, summarise, judge, assemble, export.

    from memento_sglang.data import PipelineConfig, run_pipeline
    summary = run_pipeline(Path("cot.jsonl"), Path("out"), PipelineConfig(target=...))

`memento-sglang data` is the command (docs/data.md). The stages are modules of their
own: `inputs` (JSONL / ShareGPT rows), `sentences` (rule-based splitting), `score`
(boundary scores, LLM), `segment` (the paper's objective, solved exactly), `summarize`
(compress, judge, refine, LLM), `assemble` (the SFT text with single-id delimiters),
`export` (ids, labels, logical positions and the Memento attention mask for Stage-2
SFT, a collator for HF `Trainer`), `pipeline` (the resumable runner). Names load on
first use: the pure stages need neither torch, SGLang's front end nor `datasets`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memento_sglang.data.assemble import MementoExample, QualityFilter, assemble
    from memento_sglang.data.export import (
        MementoCollator,
        TrainingFeatures,
        features_from_row,
        to_dataset,
        training_features,
    )
    from memento_sglang.data.inputs import BadRow, TraceRecord, read_traces, split_cot
    from memento_sglang.data.llm import EngineTarget, OpenAITarget, ServerTarget
    from memento_sglang.data.pipeline import PipelineConfig, PipelineSummary, run_pipeline
    from memento_sglang.data.segment import segment
    from memento_sglang.data.sentences import split_sentences

_LAZY = {
    "MementoExample": "assemble", "QualityFilter": "assemble", "assemble": "assemble",
    "MementoCollator": "export", "TrainingFeatures": "export", "features_from_row": "export",
    "to_dataset": "export", "training_features": "export",
    "BadRow": "inputs", "TraceRecord": "inputs", "read_traces": "inputs", "split_cot": "inputs",
    "EngineTarget": "llm", "OpenAITarget": "llm", "ServerTarget": "llm",
    "PipelineConfig": "pipeline", "PipelineSummary": "pipeline", "run_pipeline": "pipeline",
    "segment": "segment", "split_sentences": "sentences",
}  # fmt: skip

__all__ = [
    "BadRow",
    "EngineTarget",
    "MementoCollator",
    "MementoExample",
    "OpenAITarget",
    "PipelineConfig",
    "PipelineSummary",
    "QualityFilter",
    "ServerTarget",
    "TraceRecord",
    "TrainingFeatures",
    "assemble",
    "features_from_row",
    "read_traces",
    "run_pipeline",
    "segment",
    "split_cot",
    "split_sentences",
    "to_dataset",
    "training_features",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
