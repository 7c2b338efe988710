"""Copy from an LLM, with guardrails and a fallback.

One customer: chat completion with structured output -> parse and check (non-empty fields,
length limits) -> on invalid output, one repair turn that tells the model what was wrong ->
still invalid: the fallback generator's copy, marked ``fallback="llm_invalid_output"``.
429, 5xx, time-outs and connection errors are retried by the openai client with backoff
(``max_retries``); after that, ``on_error`` decides: the fallback's copy, or a clear error.
A rejected key, a missing model or a bad request are configuration problems and always fail.

Many customers: the same per-customer logic on the async client, ``concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Generator, Sequence, TYPE_CHECKING

import openai
from pydantic import ValidationError

from loyaltylens_core.kernel.contracts import GeneratedCopy
from loyaltylens_core.kernel.errors import ConfigError, StageError

from .prompts import load_prompt

if TYPE_CHECKING:
    from loyaltylens_core import StageContext

    from loyaltylens_generator_openai import OpenAIGeneratorSettings

TRANSIENT = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)
FIELDS = ("headline", "body", "cta")


# The chat completions endpoint, called through the client's generic post(): the same
# request, retries, time-outs and error types as client.chat.completions.create(), without
# its per-call parameter transform, which hashes typing.Literal aliases and cost a quarter
# of a service worker's CPU under LLM load (measured with py-spy). The URL is absolute
# (made once from the client's base_url, which always ends in "/"), so the client does not
# parse and merge it again per call; the body is JSON bytes (``content``), sent as is.
COMPLETIONS = "chat/completions"
# The reply comes back as its body (``cast_to=bytes``): only the first choice's text is read,
# and building the whole ChatCompletion model for it was 6% of an LLM-bound worker's CPU.
REPLY = bytes


def _json(value: Any) -> bytes:
    """JSON as the openai client itself encodes a body (UTF-8, compact, no NaN)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _online_http_client() -> Any:
    """aiohttp under the service's client when it is installed (openai[aiohttp]): under many
    concurrent calls httpx's pool checks every idle connection on every request, which
    capped an LLM-bound worker at about 200 requests/s here; None keeps the default."""
    try:
        return openai.DefaultAioHttpClient()
    except RuntimeError:  # the aiohttp extra is not installed
        return None


def response_schema() -> dict[str, Any]:
    """The JSON schema the model must answer with, taken from the GeneratedCopy contract."""
    full = GeneratedCopy.model_json_schema()
    properties = {name: {"type": "string", "description": f"the offer's {name}"} for name in FIELDS}
    assert all(name in full["properties"] for name in FIELDS)
    return {"type": "object", "properties": properties, "required": list(FIELDS), "additionalProperties": False}


def _reason(exc: Exception) -> str:
    if isinstance(exc, openai.RateLimitError):
        return "llm_rate_limited"
    if isinstance(exc, openai.APITimeoutError):
        return "llm_timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "llm_unreachable"
    return "llm_server_error"


class OpenAIGenerator:
    def __init__(self, settings: OpenAIGeneratorSettings, context: StageContext) -> None:
        self.settings = settings
        self.context = context
        self.prompt = load_prompt(settings.prompt_version, settings.prompts)
        self.prompt_version = f"openai-{self.prompt.version}"
        self.limits = {
            "max_headline_chars": settings.max_headline_chars,
            "max_body_chars": settings.max_body_chars,
            "max_cta_chars": settings.max_cta_chars,
        }
        key = settings.api_key.get_secret_value() if settings.api_key else os.environ.get("OPENAI_API_KEY")
        if not key:
            if settings.base_url is None:
                raise ConfigError(
                    "OPENAI_API_KEY is not set",
                    "export it, or set [generator.openai] base_url for a local OpenAI-compatible server",
                )
            key = "not-needed"  # local servers usually ignore the key
        options = dict(api_key=key, base_url=settings.base_url, timeout=settings.timeout_s,
                       max_retries=settings.max_retries)
        # Built once: generating the JSON schema costs about 1 ms, per request it would cap a batch.
        self.response_format: dict[str, Any] = (
            {"type": "json_schema", "json_schema": {"name": "offer_copy", "strict": True, "schema": response_schema()}}
            if settings.structured_output == "json_schema"
            else {"type": "json_object"}
        )
        self.client = openai.OpenAI(**options)
        self.url = str(self.client.base_url) + COMPLETIONS
        # Everything but the messages is the same in every request: encoded once (the
        # schema is half the body), the messages appended per call.
        fixed = _json({"model": settings.model, "temperature": settings.temperature,
                       "response_format": self.response_format})
        self._body_head = fixed[:-1] + b',"messages":'
        self._async_options = options
        self._fallback: Any = None
        # The service's client and gate, made on first use inside its event loop.
        self._online: tuple[Any, Any, asyncio.Semaphore] | None = None

    # --- shared pieces --------------------------------------------------------------

    def _request(self, messages: list[dict[str, str]]) -> bytes:
        """The request body: {model, temperature, response_format, messages}."""
        return self._body_head + _json(messages) + b"}"

    def _check(self, text: str | None) -> tuple[GeneratedCopy | None, str]:
        """Parse and check a reply: (copy, "") or (None, what was wrong)."""
        if not text:
            return None, "the reply was empty"
        try:
            data = json.loads(text)
        except ValueError:
            return None, "the reply was not valid JSON"
        if not isinstance(data, dict):
            return None, "the reply was not a JSON object"
        for field in FIELDS:
            value = data.get(field)
            if not isinstance(value, str) or not value.strip():
                return None, f"'{field}' must be a non-empty string"
            limit = self.limits[f"max_{field}_chars"]
            if len(value) > limit:
                return None, f"'{field}' has {len(value)} characters, the limit is {limit}"
        try:
            copy = GeneratedCopy(**{f: data[f].strip() for f in FIELDS}, prompt_version=self.prompt_version)
        except ValidationError as exc:
            return None, exc.errors()[0]["msg"]
        return copy, ""

    @staticmethod
    def _repair(messages: list[dict[str, str]], reply: str | None, problem: str) -> list[dict[str, str]]:
        return [
            *messages,
            {"role": "assistant", "content": reply or ""},
            {"role": "user", "content": f"That answer was invalid: {problem}. "
                                        "Reply again with only the corrected JSON object."},
        ]

    def _fallback_copy(self, variables: dict[str, Any], reason: str) -> GeneratedCopy:
        if self._fallback is None:
            self._fallback = self.context.fallback("generator", self.settings.fallback_generator)
        copy = self._fallback.generate(variables)
        return copy.model_copy(update={"fallback": reason})

    def _give_up(self, variables: dict[str, Any], exc: Exception) -> GeneratedCopy:
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            raise ConfigError(f"the LLM server rejected the API key ({exc.status_code})",
                              "check OPENAI_API_KEY or [generator.openai] api_key") from None
        if isinstance(exc, openai.NotFoundError):
            raise ConfigError(f"the LLM server has no model {self.settings.model!r} ({exc.status_code})",
                              "check [generator.openai] model and base_url") from None
        if isinstance(exc, openai.APIStatusError) and not isinstance(exc, TRANSIENT):
            raise StageError(f"the LLM server refused the request ({exc.status_code})",
                             "check the model supports structured output, or set structured_output = "
                             "\"json_object\"") from None
        reason = _reason(exc)
        if self.settings.on_error == "raise":
            where = self.settings.base_url or "api.openai.com"
            raise StageError(f"LLM call to {where} failed after {self.settings.max_retries} retries: {reason}",
                             "try again later, or set on_error = \"fallback\"") from None
        return self._fallback_copy(variables, reason)

    # --- the conversation, written once for both drivers ----------------------------

    def _conversation(self, variables: dict[str, Any]) -> Generator[bytes, Any, GeneratedCopy]:
        """Yields request bodies; is sent back the reply text or the exception raised.

        The sync and async drivers below only perform the calls, so the guardrail logic
        (check, one repair turn, fallback) exists in one place.
        """
        messages = self.prompt.messages(variables, self.limits)
        for _attempt in range(2):
            outcome = yield self._request(messages)
            if isinstance(outcome, Exception):
                return self._give_up(variables, outcome)
            copy, problem = self._check(outcome)
            if copy is not None:
                return copy
            messages = self._repair(messages, outcome, problem)
        return self._fallback_copy(variables, "llm_invalid_output")

    @staticmethod
    def _text(body: bytes) -> str | None:
        """The first choice's text from a chat completion's body; None (an empty reply, which
        the conversation repairs or falls back on) when the body is not one."""
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        return content if isinstance(content, str) else None

    def generate(self, variables: dict[str, Any]) -> GeneratedCopy:
        steps = self._conversation(variables)
        request = next(steps)
        while True:
            try:
                outcome: Any = self._text(self.client.post(self.url, content=request, cast_to=REPLY))
            except openai.OpenAIError as exc:
                outcome = exc
            try:
                request = steps.send(outcome)
            except StopIteration as done:
                return done.value

    async def _agenerate(self, client: Any, variables: dict[str, Any], gate: asyncio.Semaphore) -> GeneratedCopy:
        steps = self._conversation(variables)
        request = next(steps)
        while True:
            try:
                async with gate:
                    outcome: Any = self._text(await client.post(self.url, content=request, cast_to=REPLY))
            except openai.OpenAIError as exc:
                outcome = exc
            try:
                request = steps.send(outcome)
            except StopIteration as done:
                return done.value

    async def agenerate(self, variables: dict[str, Any]) -> GeneratedCopy:
        """One customer's copy without holding a thread while the LLM answers (the
        service awaits this; at most ``online_concurrency`` calls are in flight)."""
        loop = asyncio.get_running_loop()
        if self._online is None or self._online[0] is not loop:
            self._online = (loop, openai.AsyncOpenAI(**self._async_options, http_client=_online_http_client()),
                            asyncio.Semaphore(self.settings.online_concurrency))
        _, client, gate = self._online
        return await self._agenerate(client, variables, gate)

    def close(self) -> None:
        self.client.close()

    async def _agenerate_many(self, variables: Sequence[dict[str, Any]]) -> list[GeneratedCopy]:
        gate = asyncio.Semaphore(self.settings.concurrency)
        async with openai.AsyncOpenAI(**self._async_options) as client:
            return list(await asyncio.gather(*(self._agenerate(client, v, gate) for v in variables)))

    def generate_many(self, variables: Sequence[dict[str, Any]]) -> list[GeneratedCopy]:
        """All customers' copy with at most ``concurrency`` requests in flight."""
        if not variables:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._agenerate_many(variables))
        # Called from inside an event loop (a notebook, an async app): use a worker thread.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self._agenerate_many(variables)).result()
