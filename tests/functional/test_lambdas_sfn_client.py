"""The API function's Step Functions client against a loopback server that answers too
slowly: a read timeout on StartSyncExecution is one request, never a retried second run."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

botocore = pytest.importorskip("botocore")

READ_TIMEOUT_S = 0.3


class SlowSfn(BaseHTTPRequestHandler):
    """Counts requests and answers none before the client has given up."""

    hits = 0
    lock = threading.Lock()
    release = threading.Event()

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with SlowSfn.lock:
            SlowSfn.hits += 1
        SlowSfn.release.wait(30)  # set when the test ends, long after the client gave up
        data = b'{"status": "SUCCEEDED", "output": "{}"}'
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client closed the connection when it gave up
            pass


@pytest.fixture
def slow_sfn() -> Iterator[str]:
    SlowSfn.hits = 0
    SlowSfn.release.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowSfn)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        SlowSfn.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def runtime() -> Any:
    from polyroute.sfn_local import load_handlers

    load_handlers()
    return sys.modules["polyroute_runtime"]


def sfn_client(endpoint: str, config: Any) -> Any:
    import boto3
    from botocore.config import Config

    # StartSyncExecution's endpoint has a "sync-" host prefix, which a loopback IP cannot take.
    return boto3.client(
        "stepfunctions",
        endpoint_url=endpoint,
        region_name="eu-west-1",
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key="secret",
        config=config.merge(Config(inject_host_prefix=False)),
    )


def start(client: Any) -> None:
    client.start_sync_execution(
        stateMachineArn="arn:aws:states:eu-west-1:123456789012:stateMachine:Orchestrator",
        name="slow",
        input="{}",
    )


def test_a_read_timeout_on_start_sync_execution_is_one_request_not_retried(
    slow_sfn: str,
) -> None:
    config = runtime().sfn_config(READ_TIMEOUT_S)
    client = sfn_client(slow_sfn, config)
    with pytest.raises(botocore.exceptions.ReadTimeoutError) as raised:
        start(client)
    # The API answers 202 on exactly this exception's name.
    assert type(raised.value).__name__ == "ReadTimeoutError"
    assert SlowSfn.hits == 1


def test_the_retries_setting_the_audit_found_would_have_sent_a_second_request(
    slow_sfn: str,
) -> None:
    """What the test above guards against: "max_attempts" counts retries."""
    from botocore.config import Config

    config = Config(read_timeout=READ_TIMEOUT_S, retries={"max_attempts": 1})
    client = sfn_client(slow_sfn, config)
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        start(client)
    assert SlowSfn.hits == 2


def test_connect_and_read_timeouts_fit_the_api_functions_time() -> None:
    rt = runtime()
    config = rt.sfn_config(25)
    api_function_timeout_s = 29  # infra/stack.py: SYNC_TIMEOUT_S + 4
    assert config.connect_timeout + config.read_timeout <= api_function_timeout_s - 2
    assert config.retries == {"total_max_attempts": 1}
