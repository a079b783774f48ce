"""A circuit breaker per model: after repeated failures in a short window, route around it.

``threshold`` retryable failures of one model within ``window_s`` seconds open its circuit:
for ``cooldown_s`` seconds the router treats the model as unavailable (``open_models``) and
its decisions say why. After the cool-down the circuit is half-open: the next call is a
trial; a success closes the circuit, a failure opens it again at once.

``CircuitBreaker`` keeps that state in the process (the local engine, ``serve``).
``SharedCircuitBreaker`` keeps it in a DynamoDB table, so every Lambda container of a
deployment sees the same circuits: one container's failures route the others around the
model too.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from polyroute.awsclient import LazyClient

logger = logging.getLogger(__name__)


class Breaker(Protocol):
    """What the engine, the workflow and a call need of a circuit breaker."""

    def record_failure(self, model: str) -> bool: ...

    def record_success(self, model: str) -> None: ...

    def is_open(self, model: str) -> bool: ...

    def open_models(self) -> frozenset[str]: ...

    def reason(self) -> str: ...


class _Settings:
    """A breaker's limits and the reason its decisions give, checked once for both kinds."""

    def __init__(self, threshold: int, window_s: float, cooldown_s: float) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.window_s = window_s
        self.cooldown_s = cooldown_s

    def reason(self) -> str:
        """Why an open model is unavailable, as a routing decision shows it."""
        return (
            f"circuit open: {self.threshold} failures within {self.window_s:g}s, "
            f"routed around for {self.cooldown_s:g}s"
        )


@dataclass
class _ModelState:
    failures: deque[float] = field(default_factory=deque)
    opened_at: float | None = None
    half_open: bool = False
    trips: int = 0


class CircuitBreaker(_Settings):
    """Failure counts per model, and which models are routed around right now."""

    def __init__(
        self,
        threshold: int = 5,
        window_s: float = 30.0,
        cooldown_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(threshold, window_s, cooldown_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._models: dict[str, _ModelState] = {}

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _refresh(self, state: _ModelState, now: float) -> None:
        if state.opened_at is not None and now - state.opened_at >= self.cooldown_s:
            state.opened_at = None
            state.half_open = True
        while state.failures and now - state.failures[0] > self.window_s:
            state.failures.popleft()

    def record_failure(self, model: str, now: float | None = None) -> bool:
        """Count one failure of ``model``; True when this failure opened its circuit."""
        t = self._now(now)
        with self._lock:
            state = self._models.setdefault(model, _ModelState())
            self._refresh(state, t)
            if state.opened_at is not None:
                return False
            state.failures.append(t)
            if state.half_open or len(state.failures) >= self.threshold:
                state.opened_at = t
                state.half_open = False
                state.failures.clear()
                state.trips += 1
                return True
            return False

    def record_success(self, model: str) -> None:
        """A call to ``model`` succeeded: close its circuit and forget its failures."""
        with self._lock:
            state = self._models.get(model)
            if state is not None:
                state.failures.clear()
                state.opened_at = None
                state.half_open = False

    def is_open(self, model: str, now: float | None = None) -> bool:
        """True while ``model`` is being routed around."""
        return model in self.open_models(now)

    def open_models(self, now: float | None = None) -> frozenset[str]:
        """The models whose circuit is open at ``now`` (default: the clock's now)."""
        t = self._now(now)
        with self._lock:
            for state in self._models.values():
                self._refresh(state, t)
            return frozenset(m for m, s in self._models.items() if s.opened_at is not None)


STATE_KEY = "breaker"
"""Partition key of the per-model circuit items; failures count under ``failures#<model>``."""
PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE = "pk", "sk", "expiresAt"
"""The table's key schema and TTL attribute (``infra/stack.py`` creates it so)."""


def create_breaker_table(client: Any, table: str) -> None:
    """Create the shared breaker's table (on-demand, TTL on) with a DynamoDB client; for
    local runs and tests, since a deployment's table comes from the CDK stack."""
    client.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
            {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": PARTITION_KEY, "AttributeType": "S"},
            {"AttributeName": SORT_KEY, "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
    )


class SharedCircuitBreaker(_Settings, LazyClient):
    """The circuit breaker's state in a DynamoDB table (partition key ``pk``, sort key ``sk``,
    TTL attribute ``expiresAt``), shared by every container that uses the table.

    One item per model under ``pk = "breaker"`` holds ``openedAt`` while its circuit is open
    or half-open, so ``open_models`` is a single query. Failures are counted with atomic
    ``ADD`` in fixed windows of ``window_s`` (items ``pk = "failures#<model>"``, expired by the
    table's TTL); the update that opens a circuit is conditional, so of several containers
    failing at once exactly one reports opening it. Times are epoch seconds (containers share
    no monotonic clock).

    The breaker fails open: if the table cannot be read or written, a warning is logged and
    the call goes ahead as if the circuit were closed. A breaker must never be the reason a
    model is not called.
    """

    service = "dynamodb"

    def __init__(
        self,
        table: str,
        threshold: int = 5,
        window_s: float = 30.0,
        cooldown_s: float = 60.0,
        client: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _Settings.__init__(self, threshold, window_s, cooldown_s)
        LazyClient.__init__(self, client)
        self.table = table
        self._clock = clock

    def _guarded(self, what: str, call: Callable[[], Any]) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise
            logger.warning("circuit breaker table %s: %s failed: %s", self.table, what, exc)
        except BotoCoreError as exc:
            logger.warning("circuit breaker table %s: %s failed: %s", self.table, what, exc)
        return None

    def _state(self, model: str) -> dict[str, Any] | None:
        answer = self._guarded(
            "read",
            lambda: self.client.get_item(
                TableName=self.table,
                Key={"pk": {"S": STATE_KEY}, "sk": {"S": model}},
                ConsistentRead=True,
            ),
        )
        item: dict[str, Any] | None = None if answer is None else answer.get("Item")
        return item

    def _open(self, model: str, now: float, condition: str, values: dict[str, Any]) -> bool:
        """Set ``openedAt`` under ``condition``; True if this call did it."""
        from botocore.exceptions import ClientError

        try:
            done = self._guarded(
                "open",
                lambda: self.client.update_item(
                    TableName=self.table,
                    Key={"pk": {"S": STATE_KEY}, "sk": {"S": model}},
                    UpdateExpression="SET openedAt = :now ADD trips :one",
                    ConditionExpression=condition,
                    ExpressionAttributeValues={
                        ":now": {"N": repr(now)},
                        ":one": {"N": "1"},
                        **values,
                    },
                ),
            )
        except ClientError:
            return False  # another container opened it first
        return done is not None

    def record_failure(self, model: str) -> bool:
        """Count one failure of ``model``; True when this failure opened its circuit."""
        now = self._clock()
        state = self._state(model)
        opened = None if state is None or "openedAt" not in state else state["openedAt"]["N"]
        if opened is not None:
            if now - float(opened) < self.cooldown_s:
                return False  # open already
            # Half-open: the trial call failed, so the circuit opens again at once.
            return self._open(model, now, "openedAt = :was", {":was": {"N": opened}})
        window = math.floor(now / self.window_s)
        counted = self._guarded(
            "count",
            lambda: self.client.update_item(
                TableName=self.table,
                Key={"pk": {"S": f"failures#{model}"}, "sk": {"S": str(window)}},
                UpdateExpression="ADD n :one SET expiresAt = :expires",
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    ":expires": {"N": str(math.ceil(now + 2 * self.window_s))},
                },
                ReturnValues="UPDATED_NEW",
            ),
        )
        if counted is None or int(counted["Attributes"]["n"]["N"]) < self.threshold:
            return False
        return self._open(model, now, "attribute_not_exists(openedAt)", {})

    def record_success(self, model: str) -> None:
        """A call to ``model`` succeeded: close its circuit if it was open or half-open."""
        from botocore.exceptions import ClientError

        with contextlib.suppress(ClientError):  # it was closed: nothing to do
            self._guarded(
                "close",
                lambda: self.client.update_item(
                    TableName=self.table,
                    Key={"pk": {"S": STATE_KEY}, "sk": {"S": model}},
                    UpdateExpression="REMOVE openedAt",
                    ConditionExpression="attribute_exists(openedAt)",
                ),
            )

    def is_open(self, model: str) -> bool:
        """True while ``model`` is being routed around."""
        state = self._state(model)
        if state is None or "openedAt" not in state:
            return False
        return self._clock() - float(state["openedAt"]["N"]) < self.cooldown_s

    def open_models(self) -> frozenset[str]:
        """The models whose circuit is open now, from one query."""
        now = self._clock()
        answer = self._guarded(
            "query",
            lambda: self.client.query(
                TableName=self.table,
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": {"S": STATE_KEY}},
                ConsistentRead=True,
            ),
        )
        if answer is None:
            return frozenset()
        return frozenset(
            item["sk"]["S"]
            for item in answer.get("Items", [])
            if "openedAt" in item and now - float(item["openedAt"]["N"]) < self.cooldown_s
        )
