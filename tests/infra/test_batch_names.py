"""Batch names that would collide with the batch Map's own output."""

from __future__ import annotations

import json

import pytest

from infra.asl import load
from polyroute.errors import ConfigError
from polyroute.workflow import MAP_RUNS_PREFIX, prepare_batch


def test_the_map_runs_prefix_is_the_result_writers() -> None:
    writer = load("batch")["States"]["RunTasks"]["ResultWriter"]["Parameters"]["Prefix"]
    assert f"{writer}/" == MAP_RUNS_PREFIX


@pytest.mark.parametrize("key", ["batches/map-runs.jsonl", "batches/map-runs/nightly.jsonl"])
def test_a_batch_named_like_the_map_output_is_refused_before_anything_is_read(key: str) -> None:
    with pytest.raises(ConfigError, match="map-runs"):
        prepare_batch(object(), object(), "bucket", key)  # type: ignore[arg-type]


def test_other_names_are_read() -> None:
    class S3:
        def __init__(self) -> None:
            self.put: dict[str, bytes] = {}

        def get_object(self, Bucket: str, Key: str) -> dict[str, object]:
            class Body:
                def read(self) -> bytes:
                    return b"{not json\n"

            return {"Body": Body()}

        def put_object(self, Bucket: str, Key: str, Body: bytes) -> None:
            self.put[Key] = Body

    s3 = S3()
    prepared = prepare_batch(s3, object(), "bucket", "batches/map-runs-2.jsonl")  # type: ignore[arg-type]
    assert prepared.invalid_count == 1
    assert prepared.invalid_key == "batch-work/map-runs-2/invalid.json"
    assert json.loads(s3.put[prepared.invalid_key])[0]["status"] == "invalid"
