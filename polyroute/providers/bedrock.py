"""Claude on Amazon Bedrock through boto3's ``bedrock-runtime`` Converse API.

A model is called by its registry ``bedrock_id`` (a model id or an inference profile such as
``us.anthropic.claude-sonnet-4-5-20250929-v1:0``). Credentials and region come from the normal
AWS chain (environment, profile, role); nothing is configured in code. ``AWS_ENDPOINT_URL``
or ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` points the client elsewhere. boto3 is synchronous: a
call runs in a daemon thread, on one client made once. botocore's retries are off: ``execute``
retries, and counts, each attempt.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from polyroute.errors import (
    AuthenticationError,
    ConfigError,
    InvalidRequestError,
    OverloadedError,
    ProviderError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitedError,
)
from polyroute.providers import live
from polyroute.providers.base import ModelRequest, ModelResponse, register_provider
from polyroute.schema import Usage
from polyroute.secrets import redact

PROVIDER = "bedrock"
DEFAULT_REGION = "us-east-1"

_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_ERRORS: dict[str, type[ProviderError]] = {
    "ThrottlingException": RateLimitedError,
    "TooManyRequestsException": RateLimitedError,
    "ServiceUnavailableException": ProviderServerError,
    "InternalServerException": ProviderServerError,
    "ModelNotReadyException": ProviderServerError,
    "ModelErrorException": ProviderServerError,
    "ModelTimeoutException": ProviderTimeoutError,
    "ValidationException": InvalidRequestError,
    "ResourceNotFoundException": InvalidRequestError,
    "AccessDeniedException": AuthenticationError,
    "UnrecognizedClientException": AuthenticationError,
    "ExpiredTokenException": AuthenticationError,
    "InvalidSignatureException": AuthenticationError,
}


def make_client(region: str | None = None, read_timeout_s: float = live.DEFAULT_TIMEOUT_S) -> Any:
    """A ``bedrock-runtime`` client without botocore's own retries."""
    import boto3
    from botocore.config import Config

    region = (
        region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or boto3.session.Session().region_name
        or DEFAULT_REGION
    )
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        read_timeout=read_timeout_s,
        connect_timeout=10,
    )
    return boto3.client("bedrock-runtime", region_name=region, config=config)


class BedrockProvider:
    """Claude models served by Amazon Bedrock."""

    name = PROVIDER

    def __init__(
        self,
        client: Any | None = None,
        region: str | None = None,
        timeout_s: float = live.DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._client = client if client is not None else make_client(region, timeout_s)
        self._timeout_s = timeout_s
        self._clock = clock

    async def request(self, req: ModelRequest) -> ModelResponse:
        """One Converse call, in a daemon thread."""
        spec = req.model
        params = converse_params(req)
        timeout = req.timeout_s or self._timeout_s
        start = self._clock()
        try:
            resp = await asyncio.wait_for(_in_thread(self._client.converse, params), timeout)
        except TimeoutError:
            raise live.timeout_error(PROVIDER, spec.id, timeout) from None
        except Exception as exc:
            live.raise_mapped(exc, map_error(exc, spec.id, timeout))
        latency_ms = (self._clock() - start) * 1000.0
        return parse_converse(resp, req, latency_ms)


def _in_thread(fn: Callable[..., Any], kwargs: dict[str, Any]) -> asyncio.Future[Any]:
    """``fn(**kwargs)`` in a daemon thread, as a future of the running loop.

    Not ``asyncio.to_thread``: a boto3 call cannot be cancelled, and the loop's default
    executor is joined when ``asyncio.run`` ends, so a call abandoned at a deadline would hold
    the process until botocore's own read timeout. A daemon thread is simply left behind."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result, error = fn(**kwargs), None
        except Exception as exc:
            result, error = None, exc
        # The loop may be gone if the caller gave up on this call.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="polyroute-bedrock", daemon=True).start()
    return future


def converse_params(req: ModelRequest) -> dict[str, Any]:
    """Converse arguments: the prefix with a cache point when long enough, images, the rest."""
    spec = req.model
    if not spec.bedrock_id:
        raise ConfigError(f"{spec.id}: no bedrock_id in the registry, so Bedrock cannot serve it")
    content: list[dict[str, Any]] = []
    if req.prefix:
        content.append({"text": req.prefix})
        if live.prefix_cacheable(spec, req.prefix):
            content.append({"cachePoint": {"type": "default"}})
    for image in req.images:
        fmt = _IMAGE_FORMATS.get(image.media_type.lower())
        if fmt is None:
            raise InvalidRequestError(
                f"bedrock {spec.id}: image type {image.media_type} is not supported"
            )
        content.append({"image": {"format": fmt, "source": {"bytes": _b64(image.data_b64)}}})
    if req.prompt or not content:
        content.append({"text": req.prompt or "."})
    params: dict[str, Any] = {
        "modelId": spec.bedrock_id,
        "messages": [{"role": "user", "content": content}],
        "inferenceConfig": {"maxTokens": req.max_tokens},
    }
    system = live.with_json_instruction(req.system, req.json_mode)
    if system:
        params["system"] = [{"text": system}]
    return params


def _b64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise InvalidRequestError("an image is not valid base64") from None


def parse_converse(resp: dict[str, Any], req: ModelRequest, latency_ms: float) -> ModelResponse:
    """A Converse response as a ``ModelResponse``; a content filter or guardrail raises."""
    spec = req.model
    stop = str(resp.get("stopReason") or "end_turn")
    u = resp.get("usage") or {}
    # Converse reports inputTokens apart from the cache reads and writes, as Anthropic does.
    usage = Usage(
        input_tokens=int(u.get("inputTokens") or 0),
        output_tokens=int(u.get("outputTokens") or 0),
        cache_read_tokens=int(u.get("cacheReadInputTokens") or 0),
        cache_write_tokens=int(u.get("cacheWriteInputTokens") or 0),
    )
    message = (resp.get("output") or {}).get("message") or {}
    text = "".join(str(block["text"]) for block in message.get("content") or [] if "text" in block)
    extra = {"bedrock_id": str(spec.bedrock_id)}
    request_id = (resp.get("ResponseMetadata") or {}).get("RequestId")
    if request_id:
        extra["request_id"] = str(request_id)
    filtered = stop in ("content_filtered", "guardrail_intervened")
    refusal = f"stopReason {stop}" if filtered else None
    return live.answer(spec, PROVIDER, text, usage, stop, latency_ms, extra, refusal)


def map_error(exc: Exception, model: str, timeout_s: float | None) -> ProviderError | None:
    """A botocore exception as a polyroute error; None for anything else (a bug to surface)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        return live.timeout_error(PROVIDER, model, timeout_s)
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError):
        return live.connection_error(PROVIDER, model, exc)
    if isinstance(exc, NoCredentialsError):
        return AuthenticationError(f"bedrock {model}: no AWS credentials found")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = str(error.get("Code") or "")
        message = str(error.get("Message") or exc)
        status = int(meta.get("HTTPStatusCode") or 0)
        headers = meta.get("HTTPHeaders") or {}
        cls = _ERRORS.get(code)
        if cls is None:
            return live.error_for_status(PROVIDER, model, status or 500, message, code, headers)
        text = redact(f"{PROVIDER} {model}: HTTP {status} {code}: {message}")
        if "overload" in message.lower() and cls is ProviderServerError:
            return OverloadedError(text)
        if cls is RateLimitedError:
            return RateLimitedError(text, retry_after_s=live.retry_after_s(headers))
        return cls(text)
    return None


def _factory() -> BedrockProvider:
    return BedrockProvider()


register_provider(PROVIDER, _factory)
