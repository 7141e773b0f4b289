"""Every SGLang hook memento-sglang installs, by name, with what it is for.

Hook signatures follow `sglang.srt.plugins.hook_registry`: BEFORE `fn(*args)`,
AFTER `fn(result, *args)`, AROUND `fn(original, *args)`. Targets are resolved
and checked by `memento_sglang.sglang_plugin.load()` before any is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sglang.srt.environ import envs
from sglang.srt.managers.schedule_policy import AddReqResult
from sglang.srt.plugins.hook_registry import HookType

from memento_sglang.config import MementoConfigError
from memento_sglang.constants import REASONING_PARSER
from memento_sglang.sglang_plugin import (
    admission,
    attention,
    chat,
    compaction,
    cpu_threads,
    forward,
    gpu_attention,
    grammar,
    interpreter,
    mask_budget,
    request_state,
    runtime,
    settings,
    streaming,
)
from memento_sglang.sglang_plugin.admission import AdmissionEstimator
from memento_sglang.sglang_plugin.metrics import MementoMetrics
from memento_sglang.sglang_plugin.runtime import MementoRuntime

_SA = "sglang.srt.server_args.ServerArgs"
_ENGINE = "sglang.srt.entrypoints.engine.Engine"
_TM = "sglang.srt.managers.tokenizer_manager.TokenizerManager"
_SCHED = "sglang.srt.managers.scheduler.Scheduler"
_BATCH = "sglang.srt.managers.schedule_batch.ScheduleBatch"
_REQ = "sglang.srt.managers.schedule_batch.Req"
_ADDER = "sglang.srt.managers.schedule_policy.PrefillAdder"
_FWD = "sglang.srt.model_executor.forward_batch_info.ForwardBatch"
_RUNNER = "sglang.srt.model_executor.model_runner.ModelRunner"
_XGRAMMAR = "sglang.srt.constrained.xgrammar_backend.XGrammarGrammarBackend"
_TORCH_ATTN = "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend"
_FLASHINFER = "sglang.srt.layers.attention.flashinfer_backend"
_TRITON_ATTN = "sglang.srt.layers.attention.triton_backend.TritonAttnBackend"
_COMMON = "sglang.srt.mem_cache.common"
_CHAT = "sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat"
_INTERPRETER = "sglang.lang.interpreter.StreamExecutor"
_BACKEND_FIELDS = ("attention_backend", "prefill_attention_backend")
_CACHE_FIELDS = ("radix_cache_backend", "disable_radix_cache", "enable_hierarchical_cache")


@dataclass(frozen=True)
class HookSpec:
    target: str
    fn: Callable[..., Any]
    kind: HookType


# ------------------------------------------------- launcher / Engine process


def add_memento_config_flag(original, parser):
    """`--memento-config JSON` on every SGLang command line."""
    original(parser)
    settings.add_flag(parser)


def configure_from_cli(original, cls, args):
    """A masking prefill backend is chosen before SGLang resolves its defaults; the
    parsed flag then rides on the ServerArgs record into every child process."""
    raw = getattr(args, "memento_config", None)
    backends = {name: getattr(args, name, None) for name in _BACKEND_FIELDS}
    for name, value in settings.masking_backend_choice(raw, backends, args.device).items():
        setattr(args, name, value)
    cache = {name: getattr(args, name, None) for name in _CACHE_FIELDS}
    for name, value in settings.radix_cache_choice(raw, cache).items():
        setattr(args, name, value)
    for name, value in settings.reasoning_parser_choice(raw, getattr(args, "reasoning_parser", None)).items():
        setattr(args, name, value)
    server_args = original(cls, args)
    settings.attach(server_args, raw)
    return server_args


def take_engine_memento_config(self, *args, **kwargs):
    """`sgl.Engine(..., memento_config=...)`: build the ServerArgs with the config attached.

    Mirrors Engine's own kwargs path (default log level "error"); SGLang's msgspec
    record never calls a patched `__post_init__`, so the config cannot ride along later.
    """
    raw = kwargs.pop("memento_config", None)
    if raw is None:
        return None
    if "server_args" not in kwargs:
        kwargs.setdefault("log_level", "error")
        backends = {name: kwargs.get(name) for name in _BACKEND_FIELDS}
        kwargs.update(settings.masking_backend_choice(raw, backends, kwargs.get("device")))
        kwargs.update(settings.radix_cache_choice(raw, {name: kwargs.get(name) for name in _CACHE_FIELDS}))
        kwargs.update(settings.reasoning_parser_choice(raw, kwargs.get("reasoning_parser")))
        kwargs = {"server_args": self.server_args_class(**kwargs)}
    settings.attach(kwargs["server_args"], raw)
    return (self, *args), kwargs


def validate_server_config_at_startup(result, self, *args, **kwargs):
    """Tokens missing from the vocabulary etc. stop the server before it serves."""
    self.memento_resolver = settings.make_resolver(
        self.server_args, self.tokenizer, self.model_config.vocab_size, self.model_config
    )


def reject_bad_request_config(result, self, *args, **kwargs):
    """A bad `custom_params["memento"]`, or a sampling mode Memento cannot follow, is a
    ValueError here, i.e. HTTP 400."""
    params = getattr(result, "sampling_params", None)
    if params is None:
        return None
    try:
        spec = self.memento_resolver.spec_for(params.custom_params)
    except MementoConfigError as exc:
        raise ValueError(str(exc)) from None
    grammar_backend = getattr(self.server_args, "grammar_backend", None)
    if spec is not None and (reason := request_state.refused_mode(params, grammar_backend)) is not None:
        raise ValueError(reason)
    return None


def report_memento_meta_info(original, self, meta_info, state, customized_info, index, *rest):
    """`meta_info["memento"]` is the latest stats snapshot, not an accumulated list."""
    if "memento" in customized_info:
        customized_info = dict(customized_info)
        stats = customized_info.pop("memento")[index]
        if stats is not None:
            meta_info["memento"] = stats
        if not customized_info:
            return None
    return original(self, meta_info, state, customized_info, index, *rest)


# ------------------------------------------------------------ scheduler process


def install_in_scheduler(result, self, server_args, *args, **kwargs):
    """Resolve the server config once per scheduler; turn on delayed sampling if needed;
    pin a CPU rank to its cores."""
    cpu_threads.pin_rank_threads(self.device)
    resolver = settings.make_resolver(
        server_args, self.tokenizer, self.model_config.vocab_size, self.model_config,
        kv_allocator=self.token_to_kv_pool_allocator,
    )  # fmt: skip
    if resolver.server_spec is not None and self.enable_overlap:
        envs.SGLANG_ENABLE_DELAY_SAMPLE.set(True)
    masked_prefill = attention.can_mask(self.tp_worker.model_runner.attn_backend)
    settings.check_prefill_masking(resolver.server_spec, masked_prefill)
    page_size = int(server_args.page_size or 1)
    runtime.install(
        MementoRuntime(
            resolver=resolver,
            masked_prefill=masked_prefill,
            metrics=MementoMetrics.for_scheduler(self),
            mask_budget=resolver.server_config.prefill_mask_budget,
            page_size=page_size,
            admission=AdmissionEstimator(margin_sigmas=resolver.server_config.admission_margin_sigmas),
        )
    )


def stream_memento_stats(result, self, *args, **kwargs):
    return streaming.memento_streamer_class(result)


def attach_memento_state(req, self, recv_req, *args, **kwargs):
    rt = runtime.current()
    request_state.attach(req, rt.resolver, self.tree_cache, masked_prefill=rt.masked_prefill)


def restart_then_compact(self, batch, *args, **kwargs):
    """Before SGLang checks decode memory: `restart_mode` requests whose memento just
    closed go back to prefill; the other due blocks leave their rows, so the check (and
    its retractions) sees the slots they free."""
    request_state.retract_for_restart(self, batch)
    compact_before_admission(self, batch)


def compact_before_admission(self, running_batch, *args, **kwargs):
    """Slots a closing block frees count for admission and for the decode memory check
    of this very step (both come after this), and lift SGLang's "batch is full" latch."""
    with runtime.current().metrics.compaction_timer(count_step=False):
        if compaction.compact_running_batch(running_batch):
            running_batch.batch_is_full = False


def admit_with_memento_estimate(original, self, req, *args, **kwargs):
    """A new request: SGLang's estimate of its growth is Memento's, and a masked batch's
    chunks are cut so that the batch's mask fits `prefill_mask_budget`."""
    return _admit(original, self, req, AddReqResult.OTHER, False, *args, **kwargs)


def admit_chunk_with_memento_estimate(original, self, req, *args, **kwargs):
    """A chunked prompt's next chunk: the same, and `req` stays the chunked request when
    the batch's mask has no room left."""
    return _admit(original, self, req, req, True, *args, **kwargs)


def _admit(original, self, req, when_mask_full, continuing, *args, **kwargs):
    seq = request_state.synced(req)
    needs_mask = seq is not None and seq.masked_prefill and seq.has_due()
    limit = mask_budget.chunk_limit(self, req, needs_mask, continuing=continuing)
    if limit == 0:  # the batch's mask is full: the request waits for the next batch
        return when_mask_full
    estimator = runtime.current().admission
    with (
        admission.estimate_scope(estimator, req, seq) as growth,
        mask_budget.chunk_scope(self, req, limit, needs_mask),
    ):
        result = original(self, req, *args, **kwargs)
    if req in self.can_run_list:
        if seq is not None:
            seq.note_admission(None if growth is None else growth.total)
        if self.running_batch is not None and req.prefix_len > 0:
            _pool_running_reservations(self)  # its prefix lock may hold a running row's nodes
    return result


def preempt_with_memento_estimate(original, self, req, *args, **kwargs):
    """Priority preemption: Memento's estimate for `req`; preempted Memento rows keep their
    work; the rows left running are reserved together again (SGLang takes each preempted
    row's own bound off the budget, and the batch's joint reservation changes with it)."""
    rt = runtime.current()
    with (
        admission.estimate_scope(rt.admission, req, request_state.synced(req)),
        rt.releases.for_memory(),
        rt.releases.holding_bounds(),  # a preemption is no failed bound: no back-off mid-adder
    ):
        preempted = original(self, req, *args, **kwargs)
    if preempted:
        _pool_running_reservations(self)
    return preempted


def reserve_for_running_request(original, self, req, *args, **kwargs):
    """A running request's reserved growth: the bound of what it can still hold live."""
    with admission.stock_clip():
        stock = original(self, req, *args, **kwargs)
    return admission.running_reservation(runtime.current().admission, stock, req, request_state.synced(req))


def reserve_for_running_batch(result, self, *args, **kwargs):
    """The running batch's Memento rows reserved together: the most they hold at once."""
    if self.running_batch is not None:
        _pool_running_reservations(self)


_POOLED = "_memento_pooled_correction"


def _pool_running_reservations(adder) -> None:
    """Replace the sum of the running Memento rows' bounds in the adder's budget by their
    joint bound (the correction applied before, if any, is taken back first)."""
    correction = runtime.current().admission.pooled_correction(adder.running_batch.reqs, request_state.synced)
    adder.memory_budget.total_offset += correction - getattr(adder, _POOLED, 0.0)
    setattr(adder, _POOLED, correction)


def retract_for_memory(original, self, *args, **kwargs):
    """SGLang's retraction on a full pool: the rows it releases keep their work."""
    with runtime.current().releases.for_memory():
        return original(self, *args, **kwargs)


def compact_before_decode(self, *args, **kwargs):
    with runtime.current().metrics.compaction_timer():
        compaction.compact_running_batch(self)


def logical_positions_and_masks(forward_batch, cls, batch, *args, **kwargs):
    forward.prepare_forward(forward_batch, batch)


def physical_fill_ids(original, self, *args, **kwargs):
    """A tree-keyed request's fill ids are its row's ids (see request_state.physical_fill_ids)."""
    if not request_state.physical_fill_ids(self):
        original(self, *args, **kwargs)


def compact_before_release(req, tree_cache, *args, checkpoint=False, **kwargs):
    """A row reaches the Memento tree with its closed blocks compacted. SGLang releases a
    retracted row without caching it; a Memento row retracted to make room goes into the
    tree too, so its re-admission reuses its mementos (`keeps_work_on_retraction`)."""
    keep = not checkpoint and request_state.keeps_work_on_retraction(req, tree_cache)
    compaction.compact_before_release(req, tree_cache, checkpoint=checkpoint or keep)
    return ((req, tree_cache, *args), {**kwargs, "checkpoint": True}) if keep else None


def cap_cached_prefix(max_prefix_len, self, *args, **kwargs):
    """Never reuse cached KV past the first query that must not see a prompt block."""
    return request_state.cap_prefix_match(self, max_prefix_len)


def reset_after_retraction(result, self, *args, **kwargs):
    rt = runtime.current()
    rt.metrics.retracted_output_tokens.inc(len(self.output_ids))
    rt.on_retraction(request_state.sequence_of(self))
    request_state.on_row_released(self)


def enforce_block_budget(self, logits_output, forward_batch, *args, **kwargs):
    forward.force_block_ends(logits_output, forward_batch)


# ------------------------------------------------------ OpenAI-compatible chat


def keep_memento_delimiters(result, self, request, *args, **kwargs):
    """Delimiters stay in chat text (the `memento` reasoning parser only)."""
    if self.reasoning_parser == REASONING_PARSER:
        chat.keep_delimiters(request)


def chat_response_with_mementos(result, self, *args, **kwargs):
    """`message.mementos` on every choice (the `memento` reasoning parser only)."""
    if self.reasoning_parser != REASONING_PARSER:
        return None
    return chat.with_mementos(result)


def chat_stream_with_mementos(original, self, *args, **kwargs):
    """`delta.mementos` in the chunk where a memento closes (the `memento` parser only)."""
    chunks = original(self, *args, **kwargs)
    if self.reasoning_parser != REASONING_PARSER:
        return chunks
    return chat.stream_with_mementos(chunks)


# ------------------------------------------------------ frontend (client process)


def keep_dsl_extra_fields(result, self, sampling_params, *args, **kwargs):
    """`memento_gen` fields (structural_tag, custom_params, ...) survive the interpreter."""
    interpreter.keep_extra_fields(result, sampling_params)


def send_dsl_extra_fields(result, self, *args, **kwargs):
    return interpreter.send_extra_fields(result, self)


def dsl_declare_result_variables(result, self, expr, *args, **kwargs):
    interpreter.declare_result_variables(self, expr)


def dsl_set_result_variables(result, self, expr, *args, **kwargs):
    """`memento_reasoning` sets its blocks, mementos and answer as program variables."""
    interpreter.set_result_variables(self, expr)


def uncached_token_level_tags(result, self, *args, **kwargs):
    """Work around xgrammar's compiler cache mixing up token-level structural tags."""
    grammar.install(self)


H = HookType
HOOKS: tuple[HookSpec, ...] = (
    HookSpec(f"{_SA}.add_cli_args", add_memento_config_flag, H.AROUND),
    HookSpec(f"{_SA}.from_cli_args", configure_from_cli, H.AROUND),
    HookSpec(f"{_ENGINE}.__init__", take_engine_memento_config, H.BEFORE),
    HookSpec(f"{_TM}.__init__", validate_server_config_at_startup, H.AFTER),
    HookSpec(f"{_TM}._create_tokenized_object", reject_bad_request_config, H.AFTER),
    HookSpec(f"{_TM}.update_request_meta_info", report_memento_meta_info, H.AROUND),
    HookSpec(f"{_SCHED}.__init__", install_in_scheduler, H.AFTER),
    HookSpec(f"{_SCHED}.get_output_streamer_class", stream_memento_stats, H.AFTER),
    HookSpec(f"{_SCHED}._create_generation_req", attach_memento_state, H.AFTER),
    HookSpec(f"{_SCHED}.update_running_batch", restart_then_compact, H.BEFORE),
    HookSpec(f"{_SCHED}.get_new_batch_prefill", compact_before_admission, H.BEFORE),
    HookSpec(f"{_ADDER}.add_one_req", admit_with_memento_estimate, H.AROUND),
    HookSpec(f"{_ADDER}.add_chunked_req", admit_chunk_with_memento_estimate, H.AROUND),
    HookSpec(f"{_ADDER}.preempt_to_schedule", preempt_with_memento_estimate, H.AROUND),
    HookSpec(f"{_BATCH}.retract_decode", retract_for_memory, H.AROUND),
    HookSpec(f"{_ADDER}._get_running_request_total_token_offset", reserve_for_running_request, H.AROUND),
    HookSpec(f"{_ADDER}.__init__", reserve_for_running_batch, H.AFTER),
    HookSpec(f"{_BATCH}.prepare_for_decode", compact_before_decode, H.BEFORE),
    HookSpec(f"{_FWD}.init_new", logical_positions_and_masks, H.AFTER),
    HookSpec(f"{_REQ}._compute_max_prefix_len", cap_cached_prefix, H.AFTER),
    HookSpec(f"{_REQ}.refresh_fill_ids", physical_fill_ids, H.AROUND),
    HookSpec(f"{_COMMON}.release_kv_cache", compact_before_release, H.BEFORE),
    HookSpec(f"{_TORCH_ATTN}.forward_extend", attention.with_batch_plans, H.AROUND),
    HookSpec(f"{_TORCH_ATTN}._run_sdpa_forward_extend", attention.masked_sdpa_extend, H.AROUND),
    HookSpec(f"{_TORCH_ATTN}._run_sdpa_forward_decode", attention.batched_sdpa_decode, H.AROUND),
    HookSpec(
        f"{_FLASHINFER}.FlashInferAttnBackend.init_forward_metadata",
        gpu_attention.flashinfer_plan_with_mask,
        H.AROUND,
    ),  # fmt: skip
    HookSpec(
        f"{_FLASHINFER}.FlashInferIndicesUpdaterPrefill.call_begin_forward",
        gpu_attention.flashinfer_pass_mask,
        H.AROUND,
    ),  # fmt: skip
    HookSpec(f"{_TRITON_ATTN}.init_forward_metadata", gpu_attention.triton_metadata_with_mask, H.AROUND),
    HookSpec(f"{_TRITON_ATTN}._forward_extend_kernel", gpu_attention.triton_mask_prefix_too, H.AROUND),
    HookSpec(f"{_REQ}.reset_for_retract", reset_after_retraction, H.AFTER),
    HookSpec(f"{_RUNNER}.sample", enforce_block_budget, H.BEFORE),
    HookSpec(f"{_XGRAMMAR}.__init__", uncached_token_level_tags, H.AFTER),
    HookSpec(f"{_CHAT}._patch_reasoning_skip_special_tokens", keep_memento_delimiters, H.AFTER),
    HookSpec(f"{_CHAT}._build_chat_response", chat_response_with_mementos, H.AFTER),
    HookSpec(f"{_CHAT}._generate_chat_stream", chat_stream_with_mementos, H.AROUND),
    HookSpec(f"{_INTERPRETER}._resolve_sampling_params", keep_dsl_extra_fields, H.AFTER),
    HookSpec("sglang.lang.ir.SglSamplingParams.to_srt_kwargs", send_dsl_extra_fields, H.AFTER),
    HookSpec(f"{_INTERPRETER}._init_var_event", dsl_declare_result_variables, H.AFTER),
    HookSpec(f"{_INTERPRETER}._execute_gen", dsl_set_result_variables, H.AFTER),
)
