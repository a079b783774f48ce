"""The state machine definitions, as files in ``statemachines/``, and the composition of the
batch workflow (whose child executions run the orchestrator's own states)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

ASL_DIR = Path(__file__).resolve().parents[1] / "statemachines"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9]+)\}")


def load(name: str) -> dict[str, Any]:
    """``statemachines/<name>.asl.json`` as a dict."""
    data: dict[str, Any] = json.loads((ASL_DIR / f"{name}.asl.json").read_text("utf-8"))
    return data


def placeholders(definition: dict[str, Any] | str) -> set[str]:
    """The ``${Name}`` substitutions a definition needs."""
    text = definition if isinstance(definition, str) else json.dumps(definition)
    return set(PLACEHOLDER.findall(text))


def batch_definition() -> dict[str, Any]:
    """The batch workflow with the orchestrator's states as its Distributed Map's processor."""
    batch = load("batch")
    orchestrator = load("orchestrator")
    processor = batch["States"]["RunTasks"]["ItemProcessor"]
    processor["StartAt"] = orchestrator["StartAt"]
    processor["States"] = copy.deepcopy(orchestrator["States"])
    return batch


def definition_text(definition: dict[str, Any]) -> str:
    """A definition as the JSON text Step Functions receives."""
    return json.dumps(definition, indent=1)
