"""How the data pipeline talks to a model: every call is constrained generation into a pydantic model.

Three targets, one interface (`StructuredLLM.ask`: a batch of prompts + answer models in, validated
answers out):

- a SGLang server URL (ours or stock) and an in-process `sgl.Engine`: an `@sgl.function` program
  (`structured_answer`) run with `run_batch`, through `sgl.RuntimeEndpoint` or the front end's
  `EngineBackend`. The prompt is rendered by the served model's own chat template (its HF
  tokenizer), the answer constrained by `sgl.gen(regex=...)` (default) or `sgl.gen(json_schema=...)`;
- any OpenAI-compatible endpoint: plain HTTP `/chat/completions` with
  `response_format={"type": "json_schema", ...}` and the prompt as messages.

Why a regex by default on SGLang targets: a JSON schema leaves the whitespace between tokens
free (xgrammar and llguidance allow any amount unless the server was started with
`--constrained-json-disable-any-whitespace`), and a weak model pads it until `max_tokens`.
`schema_regex` writes the same schema as a regex with at most one space between JSON tokens and
printable-ASCII strings of bounded length, which every SGLang grammar backend (xgrammar,
llguidance, outlines) compiles, so a response always closes within a known token budget. On
outlines the string bounds are left out: its regex-to-FSM compile grows steeply with the bound
(`{0,1200}` took 50 s on a 384-token vocabulary), so there a string is bounded by `max_tokens`
and pydantic's `max_length` instead. Measured on the CPU test model (which writes noise): the
whole pipeline runs on xgrammar and llguidance; on outlines the scoring stage is exact, but the
noise model never closes a memento string, so those traces fail after their retries (a model
that ends its strings runs there too). With `json_schema` on xgrammar and llguidance the noise
model pads with whitespace until `max_tokens`, so those calls fail; a server started with
`--constrained-json-disable-any-whitespace` should avoid that (not measured here).

A response that fails validation is asked again (bounded, `max_attempts`), in one batched
round per attempt; an answer that never validates comes back as a failed `Answer`, and the stage
turns that into `LLMFailure` for its trace, never a crash of the run.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "Answer",
    "Ask",
    "CallStats",
    "ChatFormat",
    "Completer",
    "EngineTarget",
    "LLMFailure",
    "OpenAICompleter",
    "OpenAITarget",
    "Prompt",
    "SGLangCompleter",
    "ServerTarget",
    "StructuredLLM",
    "Target",
    "UnsupportedSchema",
    "connect",
    "require",
    "schema_regex",
]

M = TypeVar("M", bound=BaseModel)

# ------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class Prompt:
    """A system instruction and a user message: the one form every stage writes."""

    system: str
    user: str

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]


class ChatFormat:
    """The served model's chat template (its HF tokenizer) applied to a `Prompt`: the single
    place where prompts become model text on the SGLang targets.

    `template_kwargs` default `{"enable_thinking": False}`: a reasoning model's template then
    closes an empty think section, so the constrained answer starts at once (templates that do
    not know the flag ignore it).
    """

    def __init__(self, tokenizer: Any, template_kwargs: dict[str, Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.template_kwargs = {"enable_thinking": False} if template_kwargs is None else template_kwargs

    def render(self, prompt: Prompt) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            return f"{prompt.system}\n\n{prompt.user}\n\n"
        return self.tokenizer.apply_chat_template(
            prompt.messages(), tokenize=False, add_generation_prompt=True, **self.template_kwargs
        )


# ------------------------------------------------------------------ schema -> regex


class UnsupportedSchema(ValueError):
    """The answer model uses a JSON-schema feature `schema_regex` does not write as a regex."""


#: between JSON tokens: nothing or one space (a model cannot pad forever)
JSON_WS = "[ ]?"
#: one character of a JSON string: printable ASCII except `"` and `\`, or a short escape
JSON_CHAR = r'([ !#-\[\]-~]|\\["\\/nt])'


@dataclass(frozen=True)
class Constraint:
    """A regex for an answer model and the longest text it matches (its token bound:
    every token of a printable-ASCII text is at least one character)."""

    regex: str
    max_chars: int


def schema_regex(schema: dict[str, Any], *, bounded_strings: bool = True) -> Constraint:
    """The JSON documents valid under `schema` (the subset the stages use) as one regex.

    Supported: objects whose properties are all required (written in schema order, no extra
    keys), `enum`/`const` of JSON scalars, integers with small `minimum`/`maximum`, booleans,
    strings with `maxLength`, arrays with `maxItems`, `$ref` into `$defs`.
    `bounded_strings=False` writes strings as `*` (outlines; see the module docstring);
    `max_chars` still counts `maxLength`, which pydantic enforces.
    """
    return _Emitter(schema, bounded_strings).value(schema, "#")


class _Emitter:
    def __init__(self, root: dict[str, Any], bounded_strings: bool) -> None:
        self.root = root
        self.bounded = bounded_strings

    def value(self, schema: dict[str, Any], where: str) -> Constraint:
        if "$ref" in schema:
            return self.value(self._resolve(schema["$ref"]), schema["$ref"])
        if "const" in schema:
            return _alternatives([schema["const"]])
        if "enum" in schema:
            return _alternatives(schema["enum"])
        kind = schema.get("type")
        if kind == "object":
            return self._object(schema, where)
        if kind == "array":
            return self._array(schema, where)
        if kind == "string":
            return self._string(schema, where)
        if kind == "integer" and "minimum" in schema and "maximum" in schema:
            low, high = int(schema["minimum"]), int(schema["maximum"])
            if high - low > 1000:
                raise UnsupportedSchema(f"{where}: integer range {low}..{high} is too wide to list")
            return _alternatives(list(range(low, high + 1)))
        if kind == "boolean":
            return _alternatives([True, False])
        raise UnsupportedSchema(f"{where}: {json.dumps(schema)[:200]} is not supported")

    def _resolve(self, ref: str) -> dict[str, Any]:
        prefix = "#/$defs/"
        if not ref.startswith(prefix) or ref[len(prefix) :] not in self.root.get("$defs", {}):
            raise UnsupportedSchema(f"cannot resolve $ref {ref!r}")
        return self.root["$defs"][ref[len(prefix) :]]

    def _object(self, schema: dict[str, Any], where: str) -> Constraint:
        properties: dict[str, Any] = schema.get("properties", {})
        if set(schema.get("required", [])) != set(properties):
            raise UnsupportedSchema(f"{where}: every property must be required")
        if schema.get("additionalProperties", True) is not False:
            raise UnsupportedSchema(f"{where}: additionalProperties must be false (extra='forbid')")
        parts, longest = [], 2
        for i, (name, sub) in enumerate(properties.items()):
            key = json.dumps(name)
            inner = self.value(sub, f"{where}/{name}")
            sep = f"{JSON_WS},{JSON_WS}" if i else JSON_WS
            parts.append(f"{sep}{re.escape(key)}{JSON_WS}:{JSON_WS}{inner.regex}")
            longest += len(key) + 1 + inner.max_chars + 2 + (3 if i else 1)
        return Constraint(r"\{" + "".join(parts) + JSON_WS + r"\}", longest + 1)

    def _array(self, schema: dict[str, Any], where: str) -> Constraint:
        if "maxItems" not in schema:
            raise UnsupportedSchema(f"{where}: an array needs maxItems (max_length)")
        low, high = int(schema.get("minItems", 0)), int(schema["maxItems"])
        if high == 0:
            return Constraint(r"\[" + JSON_WS + r"\]", 3)
        item = self.value(schema.get("items", {}), f"{where}/items")
        rest = f"({JSON_WS},{JSON_WS}{item.regex})"
        tail = rest + _quantifier(max(low - 1, 0), high - 1)
        body = f"{item.regex}{tail}" if low else f"({item.regex}{tail})?"
        longest = 4 + high * item.max_chars + (high - 1) * 3
        return Constraint(r"\[" + JSON_WS + body + JSON_WS + r"\]", longest)

    def _string(self, schema: dict[str, Any], where: str) -> Constraint:
        if "maxLength" not in schema:
            raise UnsupportedSchema(f"{where}: a string needs maxLength (max_length)")
        if "pattern" in schema or "format" in schema:
            raise UnsupportedSchema(f"{where}: string patterns and formats are not supported")
        low, high = int(schema.get("minLength", 0)), int(schema["maxLength"])
        repeat = _quantifier(low, high) if self.bounded else ("*" if low == 0 else f"{{{low},}}")
        return Constraint(f'"{JSON_CHAR}{repeat}"', 2 + 2 * high)


def _quantifier(low: int, high: int) -> str:
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def _alternatives(values: Sequence[Any]) -> Constraint:
    texts = sorted({json.dumps(v) for v in values}, key=lambda t: (-len(t), t))
    return Constraint("(" + "|".join(re.escape(t) for t in texts) + ")", max(len(t) for t in texts))


@cache
def answer_constraint(answer: type[BaseModel], bounded_strings: bool) -> Constraint:
    """`schema_regex` of an answer model (cached: SGLang also caches compiled grammars by text)."""
    return schema_regex(answer.model_json_schema(), bounded_strings=bounded_strings)


@cache
def answer_schema(answer: type[BaseModel]) -> str:
    return json.dumps(answer.model_json_schema())


def token_budget(answer: type[BaseModel]) -> int:
    """`max_tokens` for one answer: the longest compact document it allows, plus slack."""
    return answer_constraint(answer, True).max_chars + 16


# ------------------------------------------------------------------ asks and answers


@dataclass(frozen=True)
class Ask(Generic[M]):
    """One constrained call: a prompt and the pydantic model its answer must validate as."""

    prompt: Prompt
    answer: type[M]


@dataclass
class Answer(Generic[M]):
    """What one `Ask` produced: the validated value, or the reasons it never validated."""

    value: M | None = None
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    raw: str = ""
    #: attempts that got no response at all (connection refused, timeout, HTTP error)
    transport_errors: int = 0

    @property
    def ok(self) -> bool:
        return self.value is not None


class LLMFailure(RuntimeError):
    """A stage's call never produced a valid answer within its attempts: the trace fails.

    `transport`: no attempt of a failed call got a response (the endpoint was down), so the
    trace says nothing about the model and a rerun should redo it.
    """

    def __init__(self, message: str, *, transport: bool = False) -> None:
        super().__init__(message)
        self.transport = transport


def require(answers: Sequence[Answer[M]], stage: str) -> list[M]:
    """The values of `answers`, or `LLMFailure` naming the calls that never validated."""
    failed = [(i, a) for i, a in enumerate(answers) if a.value is None]
    if failed:
        i, first = failed[0]
        why = first.errors[-1] if first.errors else "no answer"
        raise LLMFailure(
            f"{stage}: {len(failed)} of {len(answers)} calls gave no valid answer after "
            f"{first.attempts} attempts (call {i}: {why})",
            transport=all(a.transport_errors == a.attempts for _, a in failed),
        )
    return [a.value for a in answers]  # type: ignore[misc]  # all set: checked above


@dataclass
class CallStats:
    """LLM use of one trace (threads of one trace add to it under its lock)."""

    calls: Counter[str] = field(default_factory=Counter)  # requests sent, by stage
    rounds: Counter[str] = field(default_factory=Counter)  # batched rounds, by stage
    invalid: Counter[str] = field(default_factory=Counter)  # responses that failed validation
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, calls: int, invalid: int, seconds: float) -> None:
        with self._lock:
            self.calls[stage] += calls
            self.rounds[stage] += 1
            self.invalid[stage] += invalid
            self.seconds += seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "rounds": dict(self.rounds),
            "invalid": dict(self.invalid),
            "total_calls": sum(self.calls.values()),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Call:
    """One request as a completer sends it."""

    prompt: Prompt
    answer: type[BaseModel]
    temperature: float


class Completer(Protocol):
    """One batched round of constrained requests -> the raw text of each (or its error)."""

    description: str

    def complete(self, calls: Sequence[Call]) -> list[str | BaseException]: ...

    def close(self) -> None: ...


class StructuredLLM:
    """Validated, retried, batched calls on top of a `Completer`.

    The first attempt samples at `temperature`; a retry at `max(temperature, retry_temperature)`,
    so a greedy call that came out invalid does not repeat the same text.
    """

    def __init__(
        self,
        completer: Completer,
        *,
        max_attempts: int = 3,
        temperature: float = 0.0,
        retry_temperature: float = 0.7,
        retry_backoff_s: float = 1.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.completer = completer
        self.max_attempts = max_attempts
        self.temperature = temperature
        self.retry_temperature = retry_temperature
        self.retry_backoff_s = retry_backoff_s

    @property
    def description(self) -> str:
        return self.completer.description

    def ask(self, asks: Sequence[Ask[M]], *, stage: str, stats: CallStats | None = None) -> list[Answer[M]]:
        """All `asks` at once, the invalid ones again, up to `max_attempts` rounds."""
        answers: list[Answer[M]] = [Answer() for _ in asks]
        pending = list(range(len(asks)))
        for attempt in range(1, self.max_attempts + 1):
            if not pending:
                break
            temperature = self.temperature if attempt == 1 else max(self.temperature, self.retry_temperature)
            started = time.monotonic()
            outs = self.completer.complete(
                [Call(asks[i].prompt, asks[i].answer, temperature) for i in pending]
            )
            still, transport_errors = [], 0
            for i, out in zip(pending, outs, strict=True):
                answer = answers[i]
                answer.attempts = attempt
                if isinstance(out, BaseException):
                    answer.errors.append(f"{type(out).__name__}: {str(out)[:300]}")
                    answer.transport_errors += 1
                    still.append(i)
                    transport_errors += 1
                    continue
                answer.raw = out
                try:
                    answer.value = asks[i].answer.model_validate_json(strip_fences(out))
                except ValidationError as e:
                    answer.errors.append(_short(e))
                    still.append(i)
            if stats is not None:
                stats.add(stage, len(pending), len(still), time.monotonic() - started)
            pending = still
            if transport_errors and pending and attempt < self.max_attempts:
                time.sleep(self.retry_backoff_s * attempt)
        return answers

    def close(self) -> None:
        self.completer.close()


def strip_fences(text: str) -> str:
    """An unconstrained endpoint may wrap its JSON in a markdown fence."""
    stripped = text.strip()
    match = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, re.DOTALL)
    return match.group(1) if match else stripped


def _short(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "answer"
    return f"invalid {where}: {first.get('msg', '')} ({error.error_count()} errors)"[:300]


# ---------------------------------------------------------------- SGLang (a) and (b)


@cache
def structured_program() -> Any:
    """The `@sgl.function` every SGLang call runs: a rendered prompt, then one constrained gen."""
    import sglang as sgl

    @sgl.function
    def structured_answer(s, prompt, max_tokens, temperature, regex=None, json_schema=None):  # noqa: ANN001
        s += prompt
        s += sgl.gen(
            "answer", max_tokens=max_tokens, temperature=temperature, regex=regex, json_schema=json_schema
        )

    return structured_answer


class SGLangCompleter:
    """Calls through SGLang's front end: `run_batch` of `structured_program()` on a backend
    (`sgl.RuntimeEndpoint` for a URL, `EngineBackend` for an in-process engine).

    `constraint="regex"` (default): `schema_regex` of the answer model; `"json_schema"`: its
    JSON schema as is (whitespace is then the server's `--constrained-json-*` setting).
    `grammar_backend`: the server's (`outlines` drops the string bounds from the regex).
    """

    def __init__(
        self,
        backend: Any,
        chat: ChatFormat,
        *,
        constraint: Literal["regex", "json_schema"] = "regex",
        grammar_backend: str | None = None,
        max_in_flight: int = 64,
        description: str = "sglang",
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.backend = backend
        self.chat = chat
        self.constraint = constraint
        self.grammar_backend = grammar_backend
        self.max_in_flight = max_in_flight
        self.description = description
        self._on_close = on_close

    def arguments(self, call: Call) -> dict[str, Any]:
        """The program's arguments for one call (the request it sends, short of the HTTP body)."""
        args: dict[str, Any] = {
            "prompt": self.chat.render(call.prompt),
            "max_tokens": token_budget(call.answer),
            "temperature": call.temperature,
        }
        if self.constraint == "regex":
            args["regex"] = answer_constraint(call.answer, self.grammar_backend != "outlines").regex
        else:
            args["json_schema"] = answer_schema(call.answer)
        return args

    def complete(self, calls: Sequence[Call]) -> list[str | BaseException]:
        if not calls:
            return []
        program = structured_program()
        states = program.run_batch(
            [self.arguments(c) for c in calls],
            backend=self.backend,
            num_threads=max(1, min(self.max_in_flight, len(calls))),
        )
        out: list[str | BaseException] = []
        for state in states:
            error = state.error()
            out.append(error if error is not None else state["answer"])
        return out

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()


# ---------------------------------------------------------------- OpenAI-compatible (c)


class OpenAICompleter:
    """Plain HTTP `POST {base_url}/chat/completions` with a JSON-schema `response_format`.

    `base_url` is what the `openai` client takes (`http://host:port/v1`). `strict` is sent as
    the schema's `strict` flag: OpenAI's strict mode refuses `maxLength`, so it is off by
    default and pydantic checks every answer anyway. `extra_body` is merged into every request
    (e.g. `{"chat_template_kwargs": {"enable_thinking": false}}` on SGLang/vLLM).
    `constraint="regex"` sends `schema_regex` in SGLang's own `regex` request field instead of
    a `response_format` (an SGLang server only; other endpoints ignore or refuse it).

    A server with a reasoning parser may return an answer it took for reasoning in
    `reasoning_content` and leave `content` empty; the answer is then read from there.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        strict: bool = False,
        extra_body: dict[str, Any] | None = None,
        constraint: Literal["json_schema", "regex"] = "json_schema",
        max_in_flight: int = 16,
        timeout_s: float = 600.0,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.strict = strict
        self.constraint = constraint
        self.extra_body = dict(extra_body or {})
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.description = f"openai:{model}@{base_url}"
        self._local = threading.local()

    def body(self, call: Call) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": call.prompt.messages(),
            "temperature": call.temperature,
            "max_tokens": token_budget(call.answer),
        }
        if self.constraint == "regex":
            body["regex"] = answer_constraint(call.answer, True).regex
        else:
            schema = call.answer.model_json_schema()
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": call.answer.__name__, "schema": schema, "strict": self.strict},
            }
        return {**body, **self.extra_body}

    def complete(self, calls: Sequence[Call]) -> list[str | BaseException]:
        if not calls:
            return []
        with ThreadPoolExecutor(max(1, min(self.max_in_flight, len(calls)))) as pool:
            return list(pool.map(self._one, calls))

    def _one(self, call: Call) -> str | BaseException:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            response = session.post(self.url, json=self.body(call), headers=headers, timeout=self.timeout_s)
            if response.status_code != 200:
                return RuntimeError(f"{self.url} answered {response.status_code}: {response.text[:300]}")
            return message_text(response.json()["choices"][0]["message"])
        except (requests.RequestException, KeyError, IndexError, ValueError) as e:
            return e

    def close(self) -> None:
        pass


def message_text(message: dict[str, Any]) -> str:
    """A chat message's answer: `content`, or `reasoning_content` when a reasoning parser took it."""
    return message.get("content") or message.get("reasoning_content") or ""


# ------------------------------------------------------------------------- targets


class ServerTarget(BaseModel):
    """(a) A running SGLang server (ours or stock), through `sgl.RuntimeEndpoint`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["server"] = "server"
    url: str
    constraint: Literal["regex", "json_schema"] = "regex"
    chat_template_kwargs: dict[str, Any] = {"enable_thinking": False}


class EngineTarget(BaseModel):
    """(b) An in-process `sgl.Engine` on a local model, through `EngineBackend`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["engine"] = "engine"
    model_path: str
    engine_args: dict[str, Any] = {}
    constraint: Literal["regex", "json_schema"] = "regex"
    chat_template_kwargs: dict[str, Any] = {"enable_thinking": False}


class OpenAITarget(BaseModel):
    """(c) Any OpenAI-compatible endpoint; the key is read from `api_key_env`, never stored."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["openai"] = "openai"
    url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    strict: bool = False
    extra_body: dict[str, Any] = {}
    constraint: Literal["json_schema", "regex"] = "json_schema"


Target = Annotated[ServerTarget | EngineTarget | OpenAITarget, Field(discriminator="kind")]


def served_model_info(url: str) -> dict[str, Any]:
    """The server's model and tokenizer paths and its grammar backend."""
    import requests

    base = url.rstrip("/")
    info = requests.get(f"{base}/get_model_info", timeout=30).json()
    try:
        server = requests.get(f"{base}/get_server_info", timeout=30).json()
        info["grammar_backend"] = server.get("grammar_backend")
    except (requests.RequestException, ValueError):
        info["grammar_backend"] = None
    return info


def connect(target: ServerTarget | EngineTarget | OpenAITarget, *, max_in_flight: int = 64) -> Completer:
    """A completer for `target` (an engine target starts the engine here; `close()` stops it)."""
    if isinstance(target, OpenAITarget):
        return OpenAICompleter(
            target.url,
            target.model,
            api_key=os.environ.get(target.api_key_env),
            strict=target.strict,
            extra_body=target.extra_body,
            constraint=target.constraint,
            max_in_flight=max_in_flight,
        )
    from transformers import AutoTokenizer

    if isinstance(target, ServerTarget):
        import sglang as sgl

        info = served_model_info(target.url)
        tokenizer = AutoTokenizer.from_pretrained(info.get("tokenizer_path") or info["model_path"])
        return SGLangCompleter(
            sgl.RuntimeEndpoint(target.url),
            ChatFormat(tokenizer, target.chat_template_kwargs),
            constraint=target.constraint,
            grammar_backend=info.get("grammar_backend"),
            max_in_flight=max_in_flight,
            description=f"sglang:{target.url}",
        )
    from memento_sglang.engine import Engine
    from memento_sglang.frontend import EngineBackend

    engine = Engine(model_path=target.model_path, **target.engine_args)
    backend = EngineBackend(engine)

    def stop() -> None:
        backend.close()
        engine.shutdown()

    return SGLangCompleter(
        backend,
        ChatFormat(AutoTokenizer.from_pretrained(target.model_path), target.chat_template_kwargs),
        constraint=target.constraint,
        grammar_backend=engine.server_args.grammar_backend,
        max_in_flight=max_in_flight,
        description=f"engine:{target.model_path}",
        on_close=stop,
    )
