"""`EngineBackend`: `@sgl.function` programs on an in-process `sgl.Engine`, no HTTP server.

SGLang's frontend talks to a server through `RuntimeEndpoint`, which POSTs
`/generate` payloads. `EngineBackend` is that class with the transport swapped: each
payload becomes the same `GenerateReqInput` the HTTP server would build and goes to
the engine's tokenizer manager. The engine's event loop runs in a thread of its own,
so programs run concurrently (`run_batch`, `fork`) and are batched by the scheduler
as they would be on a server.

    engine = memento_sglang.Engine(model_path=..., memento_config=...)
    with EngineBackend(engine) as backend:
        state = solve.run(question=..., backend=backend)

While the backend is open the loop belongs to it: call the engine's own sync methods
(`engine.generate`, `engine.shutdown`) after `close()`. `close()` waits for the requests in
flight; a program still running after it gets an error, not a hang (`state.sync()` first
when a program's last call may still be running: `run()` returns before it ends).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Iterator
from typing import Any

from sglang.lang.backend.base_backend import BaseBackend
from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint
from sglang.lang.chat_template import get_chat_template, get_chat_template_by_model_path
from sglang.lang.global_config import global_config
from sglang.srt.managers.io_struct import GenerateReqInput

_LOGPROB_FIELDS = ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs")
_END = object()


class EngineBackend(RuntimeEndpoint):
    """A `RuntimeEndpoint` whose requests go to an `sgl.Engine` in this process."""

    def __init__(self, engine: Any, chat_template_name: str | None = None) -> None:
        BaseBackend.__init__(self)
        self.support_concate_and_append = False
        self.engine = engine
        self.model_info = {"model_path": engine.server_args.model_path}
        self.chat_template = (
            get_chat_template(chat_template_name)
            if chat_template_name
            else get_chat_template_by_model_path(engine.server_args.model_path)
        )
        self._loop: asyncio.AbstractEventLoop = engine.loop
        self._in_flight: set[concurrent.futures.Future] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine-backend", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Wait for the requests in flight, then give the event loop back to the engine."""
        with self._lock:
            self._closed = True
            pending = list(self._in_flight)
        concurrent.futures.wait(pending)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def __enter__(self) -> EngineBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    def _generate_http_request(self, s: Any, data: dict) -> Any:
        self._add_images(s, data)
        return self._call(data)

    def _call(self, data: dict) -> Any:
        return self._submit(self._first(data)).result()

    def _submit(self, coro: Any) -> concurrent.futures.Future:
        with self._lock:
            if self._closed:
                coro.close()
                raise RuntimeError("EngineBackend is closed")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)
        return future

    async def _first(self, data: dict) -> Any:
        return await self.engine.tokenizer_manager.generate_request(
            GenerateReqInput(**data), None
        ).__anext__()

    def _stream(self, data: dict) -> Iterator[dict]:
        chunks: queue.Queue = queue.Queue()

        async def pump() -> None:
            try:
                obj = GenerateReqInput(**data)
                async for chunk in self.engine.tokenizer_manager.generate_request(obj, None):
                    chunks.put(chunk)
            except BaseException as exc:  # cancellation included: handed to the reader
                chunks.put(exc)
                raise
            finally:
                chunks.put(_END)

        self._submit(pump())
        while (chunk := chunks.get()) is not _END:
            if isinstance(chunk, BaseException):
                raise RuntimeError("the engine stream failed") from chunk
            yield chunk

    def _payload(self, s: Any, sampling_params: Any) -> dict:
        """The `/generate` body `RuntimeEndpoint.generate` would send."""
        self._handle_dtype_to_regex(sampling_params)
        data = {
            "text": s.text_,
            "sampling_params": {
                "skip_special_tokens": global_config.skip_special_tokens_in_output,
                "spaces_between_special_tokens": global_config.spaces_between_special_tokens_in_out,
                **sampling_params.to_srt_kwargs(),
            },
        }
        for item in _LOGPROB_FIELDS:
            value = getattr(sampling_params, item, None)
            if value is not None:
                data[item] = value
        self._add_images(s, data)
        return data

    # ------------------------------------------------- RuntimeEndpoint's API

    def generate(self, s: Any, sampling_params: Any) -> tuple[str, dict]:
        out = self._generate_http_request(s, self._payload(s, sampling_params))
        return out["text"], out["meta_info"]

    def generate_stream(self, s: Any, sampling_params: Any) -> Iterator[tuple[str, dict]]:
        data = {**self._payload(s, sampling_params), "stream": True}
        pos = 0
        for chunk in self._stream(data):
            text = chunk["text"][pos:]
            pos += len(text)
            yield text, chunk["meta_info"]

    def cache_prefix(self, prefix_str: str) -> None:
        self._call({"text": prefix_str, "sampling_params": {"max_new_tokens": 0}})

    def commit_lazy_operations(self, s: Any) -> None:
        self._generate_http_request(s, {"text": s.text_, "sampling_params": {"max_new_tokens": 0}})

    fill_image = commit_lazy_operations

    def flush_cache(self) -> None:
        self._submit(self.engine.tokenizer_manager.flush_cache()).result()

    def get_server_info(self) -> dict:
        return {"model_path": self.model_info["model_path"]}

    def concatenate_and_append(self, src_rids: list[str], dst_rid: str) -> None:
        raise NotImplementedError("EngineBackend does not concatenate KV caches")
