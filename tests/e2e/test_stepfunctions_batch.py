"""The batch path under moto: a JSONL file in the bucket, the batch workflow (the real ASL,
its Distributed Map's children running the orchestrator's states), results and summary.

moto's interpreter has no ``EXPRESS`` execution type for a Distributed Map's children: the
test runs them as ``STANDARD``, the only change from the deployed definition."""

from __future__ import annotations

import json

import pytest

from infra.asl import batch_definition, definition_text
from polyroute.api import EXPRESS_LIMIT_S
from polyroute.sfn_local import BUCKET, LocalStepFunctions

from .test_stepfunctions import config, largest_state

pytest.importorskip("moto")


def test_a_batch_of_20_tasks_runs_each_line_and_writes_results_and_a_summary() -> None:
    lines = [json.dumps({"description": f"What is {i} plus {i}?"}) for i in range(20)]
    lines.insert(5, "{not json")
    lines.insert(
        9,
        json.dumps(
            {
                "description": "cyclic",
                "plan": {
                    "steps": [
                        {"id": "a", "description": "a", "dependsOn": ["b"]},
                        {"id": "b", "description": "b", "dependsOn": ["a"]},
                    ]
                },
            }
        ),
    )
    lines.insert(0, "# a comment line")
    local = LocalStepFunctions(config())
    with local.running():
        machine = local.batch_machine(definition_text(batch_definition()))
        key = "batches/nightly.jsonl"
        local.s3.put_object(Bucket=BUCKET, Key=key, Body="\n".join(lines).encode())
        execution = local.start(machine, {"bucket": BUCKET, "key": key}, "nightly")
        desc = local.wait(execution)
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        body = local.s3.get_object(Bucket=BUCKET, Key="batch-results/nightly/results.jsonl")
        records = [json.loads(x) for x in body["Body"].read().decode().splitlines()]
        summary = json.loads(
            local.s3.get_object(Bucket=BUCKET, Key="batch-results/nightly/summary.json")[
                "Body"
            ].read()
        )
        items = json.loads(
            local.s3.get_object(Bucket=BUCKET, Key="batch-work/nightly/items.json")["Body"].read()
        )
    by_line = {r["line"]: r for r in records}
    assert len(records) == 22
    assert summary["tasks"] == 22
    assert summary["byStatus"] == {"failed": 1, "invalid": 1, "succeeded": 20}
    assert by_line[7]["status"] == "invalid"  # the line that is not JSON
    assert "cycle: a -> b -> a" in by_line[11]["error"]
    ok = [r for r in records if r["status"] == "succeeded"]
    assert all(r["result"]["steps"][0]["model"] for r in ok)
    # Each line runs as an Express child: at most EXPRESS_LIMIT_S from its own start.
    assert {i["task"]["constraints"]["timeoutSeconds"] for i in items} == {EXPRESS_LIMIT_S}
    assert all(r["result"]["budgets"]["deadline"] for r in ok)
    assert summary["costUsd"] == pytest.approx(sum(r["costUsd"] for r in records))
    assert [r["line"] for r in records] == sorted(by_line)


def test_many_long_invalid_lines_stay_out_of_the_state_and_are_still_summarized() -> None:
    """300 invalid lines whose errors quote about 1 KB each made a state of some 350 KB
    when their records travelled in it, past Step Functions' 256 KiB
    (``States.DataLimitExceeded``, which moto does not enforce): nothing was written."""
    invalid = [json.dumps({"description": "x", f"{i:03d}" + "f" * 1000: 1}) for i in range(300)]
    lines = [json.dumps({"description": "What is 1 plus 1?"}), *invalid]
    local = LocalStepFunctions(config())
    with local.running():
        machine = local.batch_machine(definition_text(batch_definition()))
        key = "batches/messy.jsonl"
        local.s3.put_object(Bucket=BUCKET, Key=key, Body="\n".join(lines).encode())
        execution = local.start(machine, {"bucket": BUCKET, "key": key}, "messy")
        desc = local.wait(execution)
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        largest = largest_state(local.history(execution))
        body = local.s3.get_object(Bucket=BUCKET, Key="batch-results/messy/results.jsonl")
        records = [json.loads(x) for x in body["Body"].read().decode().splitlines()]
        summary = json.loads(
            local.s3.get_object(Bucket=BUCKET, Key="batch-results/messy/summary.json")[
                "Body"
            ].read()
        )
    assert largest < 16 * 1024  # the records' total is over 300 KB
    assert summary["byStatus"] == {"invalid": 300, "succeeded": 1}
    assert [r["line"] for r in records] == list(range(1, 302))
    assert all("f" * 1000 in r["error"] for r in records[1:])
