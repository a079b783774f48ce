"""CLI glue for routers: ``eval routing``, ``train-router`` and ``calibrate``.

``register(subparsers)`` adds the three commands to the main parser; each command's ``func``
takes the parsed namespace and returns the exit code. A user mistake (missing folder, file or
column, unknown router or model) prints one line on stderr and returns 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from polyroute.errors import InputError
from polyroute.routers import Router, calibrate, decide, get_router
from polyroute.routers.local import ComplexityThresholds, LocalModel, LocalRouter, default_model
from polyroute.routers.train import build_parser as build_train_parser
from polyroute.routers.train import data_digest
from polyroute.routers.train import run as run_train
from polyroute.routing_eval import (
    DEFAULT_OUTPUT_TOKENS,
    RoutingDataset,
    RoutingEvaluation,
    accuracy,
    evaluate_routers,
    load_routing_data,
    plot_evaluation,
    write_scores_csv,
)

DEFAULT_ROUTERS = ("random", "length", "local")
DEFAULT_PRICE_PAIR = "claude-haiku-4-5,claude-opus-4-5"
EXIT_USAGE = 2


def _prices(model_id: str) -> tuple[float, float]:
    """(input, output) USD per million tokens of ``model_id`` from the model registry."""
    # Imported here: the registry reads YAML, which only this command's pricing needs.
    from polyroute.registry import load_registry

    price = load_registry().get(model_id).price
    return price.input, price.output


def _fail(message: str) -> int:
    print(f"polyroute: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _router_names(values: Sequence[str] | None) -> list[str]:
    if not values:
        return list(DEFAULT_ROUTERS)
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    if not names:
        raise InputError("--router: no router named")
    return names


def _make_router(name: str, model_path: str | None) -> Router:
    if name == "local" and model_path:
        return LocalRouter(_load_model(model_path))
    return get_router(name)


def _load_model(path: str) -> LocalModel:
    try:
        return LocalModel.load(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such model file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a local router model ({exc})") from None


def _load(args: argparse.Namespace) -> RoutingDataset:
    return load_routing_data(args.data, args.weak, args.strong)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _table(evaluation: RoutingEvaluation, headline: str) -> str:
    e = evaluation
    lines = [
        f"{e.n} prompts ({e.dropped_contaminated} contaminated dropped): "
        f"weak {_pct(e.weak_accuracy)}, strong {_pct(e.strong_accuracy)}, "
        f"oracle {_pct(e.oracle_accuracy)} with {_pct(e.oracle_share)} strong calls",
    ]
    if e.prices is not None:
        p = e.prices
        lines.append(
            f"prices per Mtok in/out: {p.weak_model} ${p.weak_price_in:g}/${p.weak_price_out:g},"
            f" {p.strong_model} ${p.strong_price_in:g}/${p.strong_price_out:g}; "
            f"tokens out = {e.output_tokens} per answer"
        )
    header = ("router", "APGR", "CPT(50%)", "CPT(80%)", "calls@95%", "saved@95%")
    rows = [header]
    for name, r in e.results.items():
        rows.append(
            (
                f"{name}{' *' if name == headline else ''}",
                f"{r.apgr:.3f}",
                _pct(r.cpt50),
                _pct(r.cpt80),
                "-" if r.savings is None else _pct(r.savings.share),
                "-" if r.savings is None else _pct(r.savings.saved),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            ).rstrip()
        )
    lines.append("APGR: random 0.5, higher is better; CPT: strong-call share, lower is better")
    return "\n".join(lines)


def _price_models(value: str | None) -> tuple[str, str] | None:
    if value is None or value.strip().lower() == "none":
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(parts):
        raise InputError(f"--price-pair: expected WEAK_MODEL,STRONG_MODEL, got {value!r}")
    return parts[0], parts[1]


def eval_routing(args: argparse.Namespace) -> int:
    """``polyroute eval routing``: compare routers on outcome data."""
    try:
        names = _router_names(args.router)
        models = _price_models(args.price_pair)
        if args.output_tokens < 0:
            raise InputError("--output-tokens must not be negative")
        routers = [_make_router(name, args.model) for name in names]
        dataset = _load(args)
        evaluation, scores = evaluate_routers(
            dataset, routers, _prices if models else None, models, args.output_tokens
        )
    except InputError as exc:
        return _fail(str(exc))
    headline = names[0] if args.router else "local"
    in_sample = _in_sample(routers, dataset)
    try:
        if args.scores:
            write_scores_csv(args.scores, dataset, scores)
        if args.plot:
            plot_evaluation(args.plot, dataset, evaluation)
    except OSError as exc:
        return _fail(f"cannot write {exc.filename}: {exc.strerror}")
    except ImportError as exc:
        return _fail(f"--plot needs matplotlib ({exc})")
    if args.json:
        out = evaluation.to_json(headline)
        out["inSample"] = in_sample
        print(json.dumps(out, indent=2))
    else:
        print(_table(evaluation, headline))
        for name in in_sample:
            print(
                f"note: {name} was trained on this very data, so its figures are in-sample "
                "(held-out figures: benchmarks/ROUTING.md)"
            )
    return 0


def _in_sample(routers: Sequence[Router], dataset: RoutingDataset) -> list[str]:
    """Names of the learned routers whose model was trained on exactly this data."""
    learned = [r for r in routers if isinstance(r, LocalRouter)]
    if not learned:
        return []
    digest = data_digest(dataset)
    return [r.name for r in learned if r.model.training.get("dataSha256") == digest]


def calibrate_command(args: argparse.Namespace) -> int:
    """``polyroute calibrate``: the threshold that sends a given share to the strong model."""
    share = args.strong_share
    try:
        if not 0.0 <= share <= 1.0:
            raise InputError(f"--strong-share must be within [0, 1], got {share}")
        if args.out and args.router != "local":
            raise InputError("--out writes a local router model: use it with --router local")
        model = _load_model(args.model) if args.model else None
        if args.router == "local":
            router: Router = LocalRouter(model or default_model())
        else:
            router = get_router(args.router)
        dataset = _load(args)
    except InputError as exc:
        return _fail(str(exc))
    scores = [router.score(p) for p in dataset.prompts]
    threshold = calibrate(scores, share)
    routed = [decide(s, threshold) for s in scores]
    outcome = [s if r else w for r, w, s in zip(routed, dataset.weak, dataset.strong, strict=True)]
    result: dict[str, Any] = {
        "router": router.name,
        "n": len(dataset),
        "strongShareTarget": share,
        "threshold": threshold,
        "strongShare": round(sum(routed) / len(routed), 4),
        "accuracy": round(accuracy(outcome), 4),
        "weakAccuracy": round(accuracy(dataset.weak), 4),
        "strongAccuracy": round(accuracy(dataset.strong), 4),
    }
    if isinstance(router, LocalRouter):
        medium = min(args.medium_share, 1.0 - share)
        complexity = ComplexityThresholds.calibrated(scores, share, medium)
        result["complexity"] = complexity.to_json()
        if args.out:
            # A new model object: the one loaded may be the process-wide cached default.
            calibrated = dataclasses.replace(
                router.model, complexity=complexity, strong_share=(share, threshold)
            )
            try:
                calibrated.save(args.out)
            except OSError as exc:
                return _fail(f"cannot write {args.out}: {exc.strerror}")
            result["wrote"] = args.out
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['router']}: threshold {threshold:.6f} sends {_pct(result['strongShare'])}"
            f" of {len(dataset)} prompts to the strong model (target {_pct(share)}); "
            f"accuracy {_pct(result['accuracy'])} (weak {_pct(result['weakAccuracy'])}, "
            f"strong {_pct(result['strongAccuracy'])})"
        )
        if "complexity" in result:
            c = result["complexity"]
            print(f"complexity thresholds: high >= {c['high']:.6f}, medium >= {c['medium']:.6f}")
        if "wrote" in result:
            print(f"wrote {result['wrote']}")
    return 0


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="folder of outcome CSVs: a prompt column and one True/False "
        "column per model (repeatable)",
    )
    parser.add_argument("--weak", required=True, metavar="COL", help="the weak model's column")
    parser.add_argument("--strong", required=True, metavar="COL", help="the strong model's column")


def register(subparsers: Any) -> None:
    """Add ``eval routing``, ``train-router`` and ``calibrate`` to an argparse subparsers."""
    eval_parser = subparsers.add_parser("eval", help="measure polyroute's parts on data")
    targets = eval_parser.add_subparsers(dest="eval_target", metavar="TARGET", required=True)
    routing = targets.add_parser(
        "routing",
        help="compare routers on outcome data (APGR, CPT, savings)",
        description="Sweep each router's threshold from 0%% to 100%% strong calls and report "
        "RouteLLM's metrics.",
    )
    _add_data_arguments(routing)
    routing.add_argument(
        "--router",
        action="append",
        metavar="NAME",
        help="router to measure (repeatable or a comma list; default "
        f"{','.join(DEFAULT_ROUTERS)}); the first is reported",
    )
    routing.add_argument("--model", metavar="FILE", help="model file for the local router")
    routing.add_argument("--json", action="store_true", help="print JSON")
    routing.add_argument("--plot", metavar="FILE.png", help="write the quality/calls plot")
    routing.add_argument("--scores", metavar="FILE.csv", help="write every prompt's scores")
    routing.add_argument(
        "--price-pair",
        default=DEFAULT_PRICE_PAIR,
        metavar="WEAK,STRONG",
        help="registry model ids priced for the savings figure "
        f"(default {DEFAULT_PRICE_PAIR}; 'none' to skip)",
    )
    routing.add_argument(
        "--output-tokens",
        type=int,
        default=DEFAULT_OUTPUT_TOKENS,
        metavar="N",
        help="output tokens per answer (default "
        f"{DEFAULT_OUTPUT_TOKENS}, as the MMLU data was graded)",
    )
    routing.set_defaults(func=eval_routing)

    train = subparsers.add_parser("train-router", help="train the local router on outcome data")
    build_train_parser(train)
    train.set_defaults(func=run_train)

    cal = subparsers.add_parser(
        "calibrate", help="threshold for a wanted share of strong-model calls"
    )
    _add_data_arguments(cal)
    cal.add_argument(
        "--strong-share",
        type=float,
        required=True,
        metavar="SHARE",
        help="wanted share of strong-model calls, e.g. 0.2",
    )
    cal.add_argument("--router", default="local", metavar="NAME", help="router (default local)")
    cal.add_argument(
        "--model", metavar="FILE", help="local router model (default: the shipped one)"
    )
    cal.add_argument(
        "--medium-share",
        type=float,
        default=0.3,
        metavar="SHARE",
        help="share of prompts rated medium complexity (default 0.3)",
    )
    cal.add_argument("--out", metavar="FILE", help="write the model with these thresholds to FILE")
    cal.add_argument("--json", action="store_true", help="print JSON")
    cal.set_defaults(func=calibrate_command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run these commands alone (the main CLI mounts them through ``register``)."""
    parser = argparse.ArgumentParser(prog="polyroute")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
