"""The shared circuit breaker: its state in a DynamoDB table (moto), seen by every container."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from polyroute.circuit import SharedCircuitBreaker, create_breaker_table

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

TABLE = "breaker"


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_breaker_table(client, TABLE)
        yield client


def container(dynamodb: Any, clock: Clock, threshold: int = 3) -> SharedCircuitBreaker:
    """One Lambda container's breaker over the shared table."""
    return SharedCircuitBreaker(
        TABLE, threshold=threshold, window_s=30, cooldown_s=60, client=dynamodb, clock=clock
    )


def test_failures_in_different_containers_add_up_and_open_the_circuit_for_all(
    dynamodb: Any,
) -> None:
    clock = Clock()
    a, b, c = (container(dynamodb, clock) for _ in range(3))
    assert a.record_failure("m") is False
    assert b.record_failure("m") is False
    assert c.open_models() == frozenset()
    assert c.record_failure("m") is True  # the third failure, wherever it happened
    for breaker in (a, b, c):
        assert breaker.is_open("m") and breaker.open_models() == frozenset({"m"})
    assert not a.is_open("other")
    assert b.record_failure("m") is False  # already open: nobody opens it twice


def test_only_one_of_two_racing_containers_reports_opening_it(dynamodb: Any) -> None:
    clock = Clock()
    a, b = container(dynamodb, clock, threshold=1), container(dynamodb, clock, threshold=1)
    # Both counted their failure before either opened the circuit: the conditional
    # update lets exactly one of them open it.
    assert a._open("m", clock.t, "attribute_not_exists(openedAt)", {}) is True
    assert b._open("m", clock.t, "attribute_not_exists(openedAt)", {}) is False


def test_after_the_cooldown_a_trial_failure_reopens_and_a_success_closes(dynamodb: Any) -> None:
    clock = Clock()
    a, b = container(dynamodb, clock, threshold=1), container(dynamodb, clock, threshold=1)
    assert a.record_failure("m") is True
    clock.t += 61  # half-open: routed to again, for a trial
    assert a.open_models() == frozenset() and not b.is_open("m")
    assert b.record_failure("m") is True  # the trial failed: open again at once
    assert a.is_open("m")
    clock.t += 61
    b.record_success("m")
    assert not a.is_open("m") and a.open_models() == frozenset()
    a.record_success("m")  # closing a closed circuit is harmless


def test_failures_outside_the_window_do_not_add_up(dynamodb: Any) -> None:
    clock = Clock()
    a = container(dynamodb, clock, threshold=2)
    assert a.record_failure("m") is False
    clock.t += 100  # a later window
    assert a.record_failure("m") is False
    assert not a.is_open("m")
    items = dynamodb.scan(TableName=TABLE)["Items"]
    counters = [i for i in items if i["pk"]["S"] == "failures#m"]
    assert len(counters) == 2
    assert all(float(i["expiresAt"]["N"]) > clock.t - 100 for i in counters)  # TTL set


def test_without_its_table_it_fails_open_and_says_so(
    dynamodb: Any, caplog: pytest.LogCaptureFixture
) -> None:
    missing = SharedCircuitBreaker("no-such-table", threshold=1, client=dynamodb)
    with caplog.at_level(logging.WARNING, logger="polyroute.circuit"):
        assert missing.record_failure("m") is False
        assert missing.open_models() == frozenset()
        assert missing.is_open("m") is False
        missing.record_success("m")
    assert "no-such-table" in caplog.text


def test_its_reason_matches_the_in_process_breakers(dynamodb: Any) -> None:
    from polyroute.circuit import CircuitBreaker

    shared = SharedCircuitBreaker(TABLE, threshold=4, window_s=20, cooldown_s=90, client=dynamodb)
    local = CircuitBreaker(threshold=4, window_s=20, cooldown_s=90)
    assert shared.reason() == local.reason()
    assert "circuit open" in shared.reason()
    with pytest.raises(ValueError, match="threshold"):
        SharedCircuitBreaker(TABLE, threshold=0)


def test_a_lambda_container_gets_the_shared_breaker_from_its_environment(
    dynamodb: Any, tmp_path: Any
) -> None:
    from polyroute.workflow import workflow_from_env

    env = {
        "POLYROUTE_SPILL_DIR": str(tmp_path),
        "POLYROUTE_PROVIDER": "simulated",
        "POLYROUTE_BREAKER_TABLE": TABLE,
        "POLYROUTE_BREAKER": "2, 10, 120",
    }
    wf, _ = workflow_from_env(env, dynamodb_client=dynamodb)
    breaker = wf.cfg.breaker
    assert isinstance(breaker, SharedCircuitBreaker)
    assert (breaker.table, breaker.threshold, breaker.window_s, breaker.cooldown_s) == (
        TABLE,
        2,
        10.0,
        120.0,
    )
    assert breaker.record_failure("m") is False and breaker.record_failure("m") is True
    without, _ = workflow_from_env({"POLYROUTE_SPILL_DIR": str(tmp_path)})
    assert without.cfg.breaker is None


@pytest.mark.parametrize("bad", ["5,30", "five,30,60", "0,30,60", "5,-1,60"])
def test_a_wrong_breaker_setting_is_a_clear_error(tmp_path: Any, bad: str) -> None:
    from polyroute.errors import ConfigError
    from polyroute.workflow import workflow_from_env

    env = {
        "POLYROUTE_SPILL_DIR": str(tmp_path),
        "POLYROUTE_BREAKER_TABLE": TABLE,
        "POLYROUTE_BREAKER": bad,
    }
    with pytest.raises(ConfigError, match="POLYROUTE_BREAKER"):
        workflow_from_env(env)
