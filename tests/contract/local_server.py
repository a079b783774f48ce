"""``polyroute serve`` in-process on an ephemeral loopback port, and a ``send`` for it."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from polyroute.cli import _make_engine, build_parser
from polyroute.server import create_app
from polyroute.store import TaskStore

from .request_set import Send


class LocalServer:
    """A uvicorn server for the app in a thread; ``url`` once started."""

    def __init__(
        self,
        store_dir: Path,
        *,
        options: Sequence[str] = ("--time-scale", "0.001"),
        token: str | None = None,
        max_body_bytes: int | None = None,
    ) -> None:
        args = build_parser().parse_args(
            ["serve", "--port", "0", "--store", str(store_dir), *options]
        )
        self.engine = _make_engine(args)
        self.store = TaskStore.in_dir(args.store)
        extra: dict[str, Any] = {}
        if max_body_bytes is not None:
            extra["max_body_bytes"] = max_body_bytes
        self.app = create_app(self.engine, self.store, token=token, **extra)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> LocalServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.store.close()

    def send(self) -> Send:
        """A ``send`` for the request set."""
        return http_send(self.url)


def http_send(base_url: str, timeout: float = 60.0) -> Send:
    """``send(method, path, headers, body) -> (status, headers, JSON or None)`` over HTTP."""

    def send(
        method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, Mapping[str, str], Any]:
        req = urllib.request.Request(
            base_url + path, data=body, method=method, headers=dict(headers)
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, resp_headers, data = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            status, resp_headers, data = err.code, dict(err.headers), err.read()
        ctype = resp_headers.get("content-type", resp_headers.get("Content-Type", ""))
        assert data == b"" or "application/json" in ctype, f"content type {ctype!r}"
        return status, resp_headers, json.loads(data) if data else None

    return send
