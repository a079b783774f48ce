"""The ``polyroute`` command line.

Exit codes: 0 done; 2 bad input (one line on stderr naming the file and field, and the
cycle if there is one); 3 stopped by a budget or the deadline (the partial result is still printed);
1 anything else. A user's mistake never prints a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Sequence
from datetime import date
from typing import Any, NoReturn

from polyroute.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_STOPPED,
    InputError,
    PolyrouteError,
)

PROG = "polyroute"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


MAX_TIME_SCALE = 1000.0
"""The largest ``--time-scale``: past it a simulated call sleeps for hours."""


def _time_scale(text: str) -> float:
    value = _non_negative_float(text)
    if value > MAX_TIME_SCALE:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most {MAX_TIME_SCALE:g}")
    return value


def _config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", metavar="FILE", help="model registry YAML (or $POLYROUTE_MODELS)")
    p.add_argument("--routing", metavar="FILE", help="routing policy YAML ($POLYROUTE_ROUTING)")
    p.add_argument(
        "--on", type=_date, metavar="DATE", help="route as on this date (lifecycle), default today"
    )


def _local_engine(text: str) -> str:
    if text == "local":
        return text
    if text == "stepfunctions-local":
        raise argparse.ArgumentTypeError(
            "stepfunctions-local is only for 'run'; this command runs on the local engine"
        )
    raise argparse.ArgumentTypeError(f"{text!r} is not an engine (this command takes 'local')")


def _engine_options(p: argparse.ArgumentParser, *, state_machine: bool = False) -> None:
    """The options of a command that runs tasks; ``--engine stepfunctions-local`` only where
    the command honours it (``run``): elsewhere it is refused, not silently ignored."""
    _config_options(p)
    if state_machine:
        p.add_argument(
            "--engine",
            choices=["local", "stepfunctions-local"],
            default="local",
            help="local (in-process asyncio, default) or stepfunctions-local (the real state "
            "machine under moto, each Lambda handler run in-process)",
        )
    else:
        p.add_argument(
            "--engine",
            type=_local_engine,
            default="local",
            metavar="{local}",
            help="local (in-process asyncio) only: stepfunctions-local is for 'run'",
        )
    p.add_argument(
        "--provider",
        choices=["simulated", "auto"],
        default="simulated",
        help="simulated (offline), or auto: a live provider where its "
        "credentials are present, simulated otherwise",
    )
    p.add_argument(
        "--classifier",
        choices=["local", "model"],
        default="local",
        help="local (free, default) or model (the cheap-model call)",
    )
    p.add_argument("--concurrency", type=_positive_int, default=8)
    p.add_argument(
        "--time-scale",
        type=_time_scale,
        default=1.0,
        help="scale simulated latencies (0.02 runs 50x faster)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fail",
        action="append",
        default=[],
        metavar="MODEL=KIND[xN]",
        help="inject simulated failures: the next N calls (1-1000, default 1), or KIND@P each"
        " call with probability P in [0, 1] (KIND: 429, 529, 500, timeout; refusal and"
        " truncated are answered and billed)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = _Parser(prog=PROG, description="Run AI tasks across several models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("run", help="run a task file")
    p.add_argument("task", metavar="TASK.json")
    p.add_argument("--json", action="store_true", help="print the RunResult as JSON")
    p.add_argument("--report", metavar="DIR", help="also write run.json, report.html and a PNG")
    _engine_options(p, state_machine=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("route", help="show which model a task would go to, and why")
    p.add_argument("text", nargs="?", help="the task text")
    p.add_argument("--task", metavar="FILE", help="a task file instead of text")
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-cost-usd", type=_non_negative_float, help="budget left for the call")
    _config_options(p)
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("plan", help="validate a task's plan; show waves and critical path")
    p.add_argument("task", metavar="TASK.json")
    p.add_argument("--json", action="store_true")
    _engine_options(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("cost", help="project a monthly bill, naive against routed")
    p.add_argument("--tasks", type=_positive_int, default=1_000_000)
    p.add_argument(
        "--mix",
        default="classification=0.4,implementation=0.5,planning=0.1",
        help="KEY=share,... where KEY is a task type or a model id. The shares must add up"
        " to 1, or to 100 as percentages (planning=10%%,implementation=90%%), give or take"
        " 1%% for rounding; a mix that adds up to anything else is an error, not rescaled",
    )
    p.add_argument("--input-tokens", type=_positive_int, default=2000)
    p.add_argument("--output-tokens", type=_positive_int, default=500)
    p.add_argument(
        "--baseline",
        metavar="MODEL",
        help="default: most expensive in the mix. A retired model (here or in --mix) is"
        " priced as given, with a warning on stderr naming its successor",
    )
    p.add_argument("--prices", metavar="FILE", help="YAML/JSON prices overriding the registry")
    p.add_argument("--classifier", choices=["local", "model"], default="local")
    p.add_argument("--json", action="store_true")
    _config_options(p)
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("schema", help="print the JSON Schemas")
    p.add_argument("name", nargs="?", help="one schema (Task, RunResult, AgentHandoff, ...)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("models", help="list the model registry")
    p.add_argument("--json", action="store_true")
    _config_options(p)
    p.set_defaults(func=cmd_models)

    _register_extensions(sub)
    return parser


def _register_extensions(sub: Any) -> None:
    from polyroute import cli_aws, cli_routing, cli_tools

    cli_routing.register(sub)
    cli_tools.register(sub)
    cli_aws.register(sub)


def _version() -> str:
    from polyroute import __version__

    return __version__


# --- commands ----------------------------------------------------------------------------------


def _registry_and_policy(args: argparse.Namespace) -> tuple[Any, Any]:
    from polyroute.registry import load_registry
    from polyroute.routing import load_policy

    return load_registry(args.models), load_policy(args.routing)


def _closest(name: str, known: Sequence[str]) -> str:
    """``did you mean 'x'?`` for the nearest known name, else the list of known names."""
    import difflib

    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f"did you mean {near[0]!r}?" if near else f"known: {', '.join(sorted(known))}"


def _check_failure_models(specs: Sequence[str], registry: Any) -> None:
    """Refuse ``--fail MODEL=...`` for a model not in the registry: the simulated provider
    matches failures by registry id, so an unknown one would never fire."""
    for spec in specs:
        model, sep, _ = spec.partition("=")
        if not sep or not model or model in registry.models:
            continue  # malformed specs are FailurePlan.parse's to refuse
        raise InputError(
            f"--fail {spec!r}: unknown model {model!r} ({_closest(model, registry.models)})"
        )


def _make_engine(args: argparse.Namespace) -> Any:
    from polyroute.circuit import CircuitBreaker
    from polyroute.engine import Engine, EngineConfig
    from polyroute.execute import RetryPolicy
    from polyroute.providers.select import provider_selector

    registry, policy = _registry_and_policy(args)
    _check_failure_models(args.fail, registry)
    provider_for = provider_selector(
        args.provider, seed=args.seed, time_scale=args.time_scale, failures=args.fail
    )
    return Engine(
        EngineConfig(
            registry=registry,
            policy=policy,
            provider_for=provider_for,
            classifier=args.classifier,
            concurrency=args.concurrency,
            seed=args.seed,
            retry=RetryPolicy(base_delay_s=0.5 * max(args.time_scale, 0.001)),
            today=args.on,
            breaker=CircuitBreaker(),
        )
    )


def _check_pins(path: str, task: Any, engine: Any) -> None:
    """Check the task's pinned models before anything runs, as the engine would, but with
    the error naming the task file, as other task-file errors do."""
    from polyroute.planner import check_pins

    if task.plan is None:
        return
    images = sum(1 for att in task.attachments if att.kind == "image")
    try:
        check_pins(task.plan, engine.cfg.registry, engine.cfg.today or date.today(), images)
    except InputError as exc:
        raise type(exc)(f"{path}: {exc}") from None


def _check_plan(path: str, task: Any) -> None:
    """Check the task's own plan before anything runs, as the engine would (ids,
    dependencies, cycle, ``constraints.maxSteps``), with the error naming the task file and
    the field, as other task-file errors do."""
    from polyroute.errors import PlanValidationError
    from polyroute.graph import check_graph

    if task.plan is None:
        return
    try:
        check_graph(task.plan)
    except PlanValidationError as exc:
        raise type(exc)(f"{path}: plan.steps: {exc}") from None
    steps, limit = len(task.plan.steps), task.constraints.max_steps
    if steps > limit:
        raise PlanValidationError(
            f"{path}: plan.steps: the plan has {steps} steps, more than"
            f" constraints.maxSteps={limit}"
        )


def cmd_run(args: argparse.Namespace) -> int:
    from polyroute.render import render_run
    from polyroute.taskfile import load_task

    task = load_task(args.task)
    engine = _make_engine(args)
    _check_plan(args.task, task)
    _check_pins(args.task, task, engine)
    if args.engine == "stepfunctions-local":
        from polyroute.sfn_local import run_on_stepfunctions_local

        result = run_on_stepfunctions_local(task, engine.cfg)
    else:
        result = asyncio.run(engine.run(task))
    if args.report:
        from polyroute.report import write_report

        write_report(result, args.report)
    if args.json:
        print(json.dumps(result.to_wire(), indent=2))
    else:
        print(render_run(result))
    if result.stop_reason in ("budget", "deadline"):
        return EXIT_STOPPED
    return EXIT_OK if result.status == "succeeded" else EXIT_FAILURE


def cmd_route(args: argparse.Namespace) -> int:
    from polyroute.classify import ClassifyInput, LocalClassifier
    from polyroute.render import render_route
    from polyroute.routing import Router, RouteRequest
    from polyroute.taskfile import load_task, materialize

    if (args.text is None) == (args.task is None):
        raise InputError("route: give the task TEXT or --task FILE (one of them)")
    if args.task is not None:
        task = load_task(args.task)
        mat = materialize(task.attachments)
        item = ClassifyInput(
            text=task.description,
            type_hint=task.type,
            complexity_hint=task.complexity,
            image_count=len(mat.images),
            extra_tokens=mat.document_tokens + mat.image_tokens,
        )
    else:
        item = ClassifyInput(text=args.text)
    registry, policy = _registry_and_policy(args)
    classification = LocalClassifier().classify_sync(item)
    decision = Router(registry, policy).route(
        RouteRequest(
            classification=classification,
            input_tokens=classification.token_count,
            cost_left_usd=args.max_cost_usd,
            today=args.on or date.today(),
        )
    )
    if args.json:
        print(json.dumps(decision.to_wire(), indent=2))
    else:
        print(render_route(decision))
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from polyroute.engine import Run
    from polyroute.graph import critical_path, waves
    from polyroute.render import table
    from polyroute.schema import PlanReport
    from polyroute.taskfile import load_task, materialize

    task = load_task(args.task)
    engine = _make_engine(args)
    _check_plan(args.task, task)
    _check_pins(args.task, task, engine)

    async def go() -> PlanReport:
        run = Run(engine, task, task.task_id or "plan")
        mat = materialize(task.attachments)
        classification = await engine.classify(task, mat, run)
        plan = await engine.make_plan(task, classification, run)
        path, _ = critical_path(plan)
        return PlanReport(
            task_id=run.task_id,
            source=plan.source,
            steps=plan.steps,
            waves=waves(plan),
            critical_path=path,
        )

    report = asyncio.run(go())
    if args.json:
        print(json.dumps(report.to_wire(), indent=2))
        return EXIT_OK
    rows = [
        [s.id, s.type, ", ".join(s.depends_on) or "-", s.description[:70]] for s in report.steps
    ]
    print(f"plan ({report.source}): {len(report.steps)} steps in {len(report.waves)} waves")
    print(table(["step", "type", "depends on", "description"], rows))
    print()
    for i, wave in enumerate(report.waves, 1):
        print(f"wave {i}: {', '.join(wave)}")
    print(f"critical path: {' -> '.join(report.critical_path)}")
    return EXIT_OK


MIX_TOLERANCE = 0.01
"""How far ``--mix`` shares may add up from 1 (rounding, as in thirds 0.33+0.33+0.33)."""


def _mix(text: str) -> dict[str, float]:
    """``--mix`` as fractions of 1. The shares must add up to 1, or to 100 as percentages:
    a mix that adds up to something else is a mistake (a forgotten row), not a ratio."""
    from polyroute.cost import parse_mix

    mix = parse_mix(text)  # refuses a malformed part; its shares come back rescaled to 1
    given: dict[str, float] = {}
    percent = False
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, share = part.partition("=")
        key = key.strip()
        if key in given:
            raise InputError(f"--mix: {key!r} is given twice")
        percent = percent or share.strip().endswith("%")
        given[key] = float(share.strip().rstrip("%"))
    total = sum(given.values())
    targets = (100.0,) if percent else (1.0, 100.0)
    if not any(round(abs(total - t) / t, 9) <= MIX_TOLERANCE for t in targets):
        got, want = (f"{total:g}%", "100%") if percent else (f"{total:g}", "1 (or to 100)")
        raise InputError(f"--mix: the shares add up to {got}; they must add up to {want}")
    return mix


def cmd_cost(args: argparse.Namespace) -> int:
    from polyroute.projection import apply_prices, project, projection_json
    from polyroute.render import table, usd
    from polyroute.routing import Router

    registry, policy = _registry_and_policy(args)
    if args.prices:
        registry = apply_prices(registry, args.prices)
    mix = _mix(args.mix)
    proj = project(
        registry,
        Router(registry, policy),
        tasks=args.tasks,
        mix=mix,
        input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
        baseline=args.baseline,
        classifier=args.classifier,
        on=args.on or date.today(),
    )
    # A retired model named in --mix or --baseline is priced as given (the user may want the
    # old price), with a warning naming its successor.
    for warning in proj.warnings:
        sys.stderr.write(f"{PROG}: warning: {warning}\n")
    if args.json:
        print(projection_json(proj))
        return EXIT_OK
    rows = [
        [r.key, f"{r.share:.0%}", r.model, f"{r.tasks:,.0f}", usd(r.cost_usd)] for r in proj.rows
    ]
    c = proj.classifier
    rows.append([c.key, "100%", c.model, f"{c.tasks:,.0f}", usd(c.cost_usd)])
    rows.append(["routed total", "", "", "", usd(proj.routed_usd)])
    b = proj.baseline
    rows.append([b.key, "100%", b.model, f"{b.tasks:,.0f}", usd(b.cost_usd)])
    print(
        f"{proj.tasks:,} tasks/month x ({proj.input_tokens:,} input + "
        f"{proj.output_tokens:,} output tokens)"
    )
    print(table(["row", "share", "model", "tasks", "monthly"], rows, right={1, 3, 4}))
    print(f"\nsaving: {usd(proj.savings_usd)}/month ({proj.savings_pct:.1f}%)")
    as_of = sorted(set(proj.prices_as_of.values()))
    print(f"prices: registry list prices as of {', '.join(as_of)}")
    if any(registry.get(m).token_factor != 1.0 for m in proj.prices_as_of if m in registry.models):
        print("tokens: as estimated, scaled by each model's token_factor as it bills them")
    for note in proj.notes:
        print(f"note: {note}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from polyroute.schema import json_schemas

    schemas = json_schemas()
    if args.name:
        if args.name not in schemas:
            raise InputError(f"schema: unknown name {args.name!r} (known: {', '.join(schemas)})")
        print(json.dumps(schemas[args.name], indent=2))
    else:
        print(json.dumps(schemas, indent=2))
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from polyroute.render import table

    registry, _ = _registry_and_policy(args)
    on = args.on or date.today()
    if args.json:
        print(
            json.dumps({k: v.model_dump(mode="json") for k, v in registry.models.items()}, indent=2)
        )
        return EXIT_OK
    tiers = {v: k for k, v in registry.tiers.items()}
    rows = []
    for spec in registry.models.values():
        if spec.is_retired(on):
            life = f"retired {spec.lifecycle.retires_on}"
        elif spec.lifecycle.retires_on:
            life = f"retires {spec.lifecycle.retires_on}"
        else:
            life = "active"
        if spec.lifecycle.retires_on and spec.lifecycle.successor:
            life += f", successor {spec.lifecycle.successor}"
        rows.append(
            [
                spec.id,
                tiers.get(spec.id, ""),
                spec.provider,
                f"{spec.context_window:,}",
                f"${spec.price.input:g}/${spec.price.output:g}",
                ",".join(sorted(spec.capabilities)),
                life,
            ]
        )
    print(
        table(
            ["model", "tier", "provider", "window", "in/out per M", "capabilities", "lifecycle"],
            rows,
            right={3},
        )
    )
    return EXIT_OK


# --- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except PolyrouteError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
