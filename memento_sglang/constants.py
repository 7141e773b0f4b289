"""Names the server side and the front end must agree on; this module imports nothing.

The Memento delimiters are special tokens of the model (one id each); the chat
model's end-of-turn tokens; the names of SGLang backends and parsers that Memento
chooses or checks; the error that stops a server Memento cannot serve. Both
`sglang_plugin/` and `frontend/` read them from here, so neither imports the other
for a string.
"""

from __future__ import annotations

THINK, END_THINK = "<think>", "</think>"
BLOCK_START, BLOCK_END = "<|block_start|>", "<|block_end|>"
SUMMARY_START, SUMMARY_END = "<|summary_start|>", "<|summary_end|>"
MEMENTO_TOKENS = (THINK, END_THINK, BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END)

END_OF_TURN = "<|im_end|>"  # a chat model may emit it after the answer
CHATML_TOKENS = ("<|im_start|>", END_OF_TURN, "<|endoftext|>")

#: `--reasoning-parser` that splits `<think>` text and keeps the Memento delimiters
REASONING_PARSER = "memento"
#: `--grammar-backend` values whose constraints the front end can write
GRAMMAR_BACKENDS = ("xgrammar", "llguidance")
#: prefill attention backends that apply a Memento mask (sglang_plugin/attention.py,
#: sglang_plugin/gpu_attention.py); the first is the GPU default
MASKING_BACKENDS = ("flashinfer", "triton", "torch_native")
CPU_ATTENTION_BACKEND = "torch_native"
#: `--radix-cache-backend` of the Memento radix cache (sglang_plugin/radix_cache.py)
RADIX_CACHE_BACKEND = "memento"


class MementoStartupError(SystemExit):
    """A server configuration Memento cannot serve; stops the launch with the reason.

    A `SystemExit`: SGLang's plugin loader and hook runner swallow ordinary exceptions.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"memento-sglang: {reason}")
