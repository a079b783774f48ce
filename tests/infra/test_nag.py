"""cdk-nag's AwsSolutions pack finds nothing that is not suppressed, with a reason, in
infra/nag_suppressions.py."""

from __future__ import annotations

from typing import Any

from aws_cdk.assertions import Annotations, Match


def findings(stack: Any, kind: str) -> list[str]:
    annotations = Annotations.from_stack(stack)
    found = (
        annotations.find_error("*", Match.string_like_regexp("AwsSolutions-.*"))
        if kind == "error"
        else annotations.find_warning("*", Match.string_like_regexp("AwsSolutions-.*"))
    )
    return [f"{f.id}: {str(f.entry.data)[:160]}" for f in found]


def test_no_unsuppressed_awssolutions_errors(synthesized: Any) -> None:
    _, stack, _ = synthesized
    assert findings(stack, "error") == []


def test_no_unsuppressed_awssolutions_warnings(synthesized: Any) -> None:
    _, stack, _ = synthesized
    assert findings(stack, "warning") == []


def test_every_suppression_has_a_reason(synthesized: Any) -> None:
    _, stack, _ = synthesized
    metadata = stack.template_options.metadata or {}
    rules = (metadata.get("cdk_nag") or {}).get("rules_to_suppress", [])
    assert rules, "the stack's suppressions are recorded in its metadata"
    for rule in rules:
        assert len(rule["reason"]) >= 40, rule["id"]
