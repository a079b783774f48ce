"""A loopback HTTP server that speaks three providers' wire formats, for tests.

Anthropic Messages (``POST /v1/messages``, ``/v1/messages/count_tokens``), OpenAI chat
completions (``POST /v1/chat/completions``) and Bedrock Converse
(``POST /model/{modelId}/converse``), all on one ``127.0.0.1`` port. Each model answers from
a queue of scripted replies (an error status, a delay, a dropped connection, a given body),
then with a default success whose usage is set per model, so costs can be computed by hand.
Every request is recorded with its parsed JSON body.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

# A 1x1 PNG, base64-encoded.
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5Er"
    "kJggg=="
)


@dataclass
class Reply:
    """One scripted answer: an HTTP status with a body, after a delay, or a dropped socket."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    reset: bool = False
    text: str | None = None
    stop: str | None = None


@dataclass
class Usage:
    """What a default success reports (in each API's own terms)."""

    input: int = 100
    output: int = 20
    cache_read: int = 0
    cache_write: int = 0


@dataclass
class Recorded:
    """One request the server received."""

    api: str
    model: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def anthropic_error(status: int, etype: str, message: str, **headers: str) -> Reply:
    """An Anthropic error reply."""
    body = {"type": "error", "error": {"type": etype, "message": message}}
    return Reply(status=status, body=body, headers=dict(headers))


def openai_error(status: int, etype: str, message: str, code: str | None = None) -> Reply:
    """An OpenAI error reply."""
    return Reply(status=status, body={"error": {"message": message, "type": etype, "code": code}})


def bedrock_error(status: int, code: str, message: str) -> Reply:
    """A Bedrock (restJson1) error reply."""
    return Reply(status=status, body={"message": message}, headers={"x-amzn-ErrorType": code})


class FakeProviders:
    """The loopback server and its scripts."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.scripts: dict[str, list[Reply]] = {}
        self.usage: dict[str, Usage] = {}
        self.texts: dict[str, str] = {}
        self.count_tokens: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                # A client that gave up (a timeout under test) gets no answer.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # --- set-up -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeProviders:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def queue(self, model: str, *replies: Reply) -> None:
        """The next answers of ``model`` (its API id, or its Bedrock id)."""
        with self._lock:
            self.scripts.setdefault(model, []).extend(replies)

    def set_usage(self, model: str, **usage: int) -> None:
        self.usage[model] = Usage(**usage)

    def calls(self, model: str | None = None, api: str | None = None) -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (model is None or r.model == model) and (api is None or r.api == api)
            ]

    # --- serving ------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        path = urlsplit(h.path).path
        if path.endswith("/messages/count_tokens"):
            api, model = "anthropic-count", str(body.get("model"))
        elif path.endswith("/messages"):
            api, model = "anthropic", str(body.get("model"))
        elif path.endswith("/chat/completions"):
            api, model = "openai", str(body.get("model"))
        elif path.startswith("/model/") and path.endswith("/converse"):
            api, model = "bedrock", unquote(path[len("/model/") : -len("/converse")])
        else:
            self._send(h, 404, {"message": f"no route {path}"})
            return
        with self._lock:
            self.requests.append(
                Recorded(
                    api=api,
                    model=model,
                    path=path,
                    headers={k.lower(): v for k, v in h.headers.items()},
                    body=body,
                )
            )
            queue = self.scripts.get(model)
            reply = queue.pop(0) if queue else Reply()
        if reply.delay_s:
            self._stop.wait(reply.delay_s)
        if reply.reset:
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply.body is not None or reply.status != 200:
            self._send(h, reply.status, reply.body or {}, reply.headers)
            return
        if api == "anthropic-count":
            self._send(h, 200, {"input_tokens": self.count_tokens.get(model, 0)})
            return
        usage = self.usage.get(model, Usage())
        text = reply.text if reply.text is not None else self._text(model, body, api)
        if api == "anthropic":
            out = {
                "id": f"msg_{len(self.requests)}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": reply.stop or "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": usage.input,
                    "output_tokens": usage.output,
                    "cache_read_input_tokens": usage.cache_read,
                    "cache_creation_input_tokens": usage.cache_write,
                },
            }
        elif api == "openai":
            prompt = usage.input + usage.cache_read
            out = {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "finish_reason": reply.stop or "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": usage.output,
                    "total_tokens": prompt + usage.output,
                    "prompt_tokens_details": {"cached_tokens": usage.cache_read},
                },
            }
        else:
            out = {
                "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
                "stopReason": reply.stop or "end_turn",
                "usage": {
                    "inputTokens": usage.input,
                    "outputTokens": usage.output,
                    "totalTokens": usage.input + usage.output,
                    "cacheReadInputTokens": usage.cache_read,
                    "cacheWriteInputTokens": usage.cache_write,
                },
                "metrics": {"latencyMs": 5},
            }
        self._send(h, 200, out, reply.headers)

    def _text(self, model: str, body: dict[str, Any], api: str) -> str:
        if model in self.texts:
            return self.texts[model]
        if "JSON" in json.dumps(body.get("system", "")) or (
            api == "openai" and body.get("response_format", {}).get("type") == "json_object"
        ):
            return json.dumps({"verdict": "request-changes", "model": model})
        return f"fake answer from {model}"

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(data)
