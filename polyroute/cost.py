"""Prices, the per-step cost ledger, the one-model baseline, and monthly projections."""

from __future__ import annotations

from polyroute.registry import ModelSpec
from polyroute.schema import Usage

_PER_MILLION = 1_000_000


def call_cost(spec: ModelSpec, usage: Usage) -> float:
    """USD for one call: each kind of token at its own price, in the band the prompt is in."""
    prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    band = spec.price_for(prompt)
    return (
        usage.input_tokens * band.input
        + usage.output_tokens * band.output
        + usage.cache_read_tokens * band.cache_read
        + usage.cache_write_tokens * band.cache_write
    ) / _PER_MILLION


def estimate_call_cost(spec: ModelSpec, input_tokens: int, output_tokens: int) -> float:
    """USD for a call with this many uncached input tokens and output tokens."""
    return call_cost(spec, Usage(input_tokens=input_tokens, output_tokens=output_tokens))


def billed_tokens(spec: ModelSpec, estimated_tokens: int) -> int:
    """Tokens the model counts (and bills) for text our estimator puts at this many: scaled
    by its ``token_factor``, rounded as the simulated provider and ``pack_step`` round."""
    return round(estimated_tokens * spec.token_factor)


def estimate_billed_cost(
    spec: ModelSpec, input_tokens: int, output_tokens: int, max_output_tokens: int | None = None
) -> float:
    """USD for a call whose input and output our estimator puts at these counts, as a run
    bills it: both scaled by the model's ``token_factor``, output capped at
    ``max_output_tokens`` (a call's ``max_tokens``, already in billed tokens), and priced in
    the band of the billed prompt."""
    billed_out = billed_tokens(spec, output_tokens)
    if max_output_tokens is not None:
        billed_out = min(billed_out, max_output_tokens)
    return estimate_call_cost(spec, billed_tokens(spec, input_tokens), billed_out)


def savings_pct(routed_usd: float, baseline_usd: float) -> float:
    """Saving of the routed cost against the baseline, in percent (0 when there is none)."""
    if baseline_usd <= 0:
        return 0.0
    return round(100.0 * (baseline_usd - routed_usd) / baseline_usd, 2)


def parse_mix(text: str) -> dict[str, float]:
    """``KEY=share,...`` to a mapping whose shares sum to 1 (shares may be % or fractions)."""
    from polyroute.errors import InputError

    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, share = part.partition("=")
        if not sep or not key:
            raise InputError(f"--mix {part!r}: expected KEY=share")
        try:
            value = float(share.rstrip("%"))
        except ValueError:
            raise InputError(f"--mix {part!r}: {share!r} is not a number") from None
        if value < 0:
            raise InputError(f"--mix {part!r}: a share cannot be negative")
        mix[key.strip()] = value
    total = sum(mix.values())
    if not mix or total <= 0:
        raise InputError("--mix: give at least one KEY=share with a positive share")
    return {k: v / total for k, v in mix.items()}
