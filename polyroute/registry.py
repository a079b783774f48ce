"""The model registry: capabilities, windows, prices, latency and lifecycle of every model."""

from __future__ import annotations

import os
from datetime import date
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from polyroute.errors import ConfigError, UnknownModelError
from polyroute.schema import Capability

MODELS_ENV = "POLYROUTE_MODELS"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """USD per million tokens, by kind."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float = Field(ge=0)
    cache_write: float = Field(ge=0)


class LongContextPrice(Price):
    """A higher price band for prompts above a size."""

    above_input_tokens: int = Field(gt=0)


class Latency(_Strict):
    """Typical latency: time to first token and output speed."""

    ttft_ms: int = Field(ge=0)
    output_tokens_per_s: float = Field(gt=0)


class Lifecycle(_Strict):
    """Deprecation and retirement; a retired model is replaced by its successor."""

    deprecated: bool = False
    retires_on: date | None = None
    successor: str | None = None


class ModelSpec(_Strict):
    """One model of the registry."""

    id: str
    api_id: str
    provider: str
    family: str = ""
    capabilities: frozenset[Capability] = frozenset()
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    token_factor: float = Field(default=1.0, gt=0)
    price: Price
    long_context_price: LongContextPrice | None = None
    latency: Latency
    price_source: str
    price_as_of: date
    lifecycle: Lifecycle = Lifecycle()
    base_url: str | None = None
    bedrock_id: str | None = None

    def is_retired(self, on: date) -> bool:
        """True from the retirement date on."""
        return self.lifecycle.retires_on is not None and on >= self.lifecycle.retires_on

    def price_for(self, prompt_tokens: int) -> Price:
        """The price band that applies to a prompt of this many tokens."""
        band = self.long_context_price
        if band is not None and prompt_tokens > band.above_input_tokens:
            return band
        return self.price

    def estimated_latency_ms(self, output_tokens: int) -> float:
        """Typical wall time of a call producing this many tokens."""
        return self.latency.ttft_ms + 1000.0 * output_tokens / self.latency.output_tokens_per_s


class Registry(BaseModel):
    """All models, and the tier each routing rule may name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: str = "1"
    tiers: dict[str, str]
    models: dict[str, ModelSpec]

    @model_validator(mode="before")
    @classmethod
    def _ids_from_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            models = {}
            for key, spec in data["models"].items():
                if isinstance(spec, dict):
                    spec = {"id": key, **spec}
                models[key] = spec
            data = {**data, "models": models}
        return data

    @model_validator(mode="after")
    def _references_exist(self) -> Registry:
        for tier, model_id in self.tiers.items():
            if model_id not in self.models:
                raise ValueError(f"tier {tier!r} names unknown model {model_id!r}")
        for spec in self.models.values():
            successor = spec.lifecycle.successor
            if successor is not None and successor not in self.models:
                raise ValueError(f"{spec.id}: successor {successor!r} is not in the registry")
        return self

    def get(self, model_id: str) -> ModelSpec:
        """The model with this registry id (or API id)."""
        spec = self.models.get(model_id)
        if spec is not None:
            return spec
        for candidate in self.models.values():
            if model_id in (candidate.api_id, candidate.bedrock_id):
                return candidate
        known = ", ".join(sorted(self.models))
        raise UnknownModelError(f"unknown model {model_id!r} (known: {known})")

    def tier(self, name: str) -> ModelSpec:
        """The model a tier maps to."""
        if name not in self.tiers:
            raise ConfigError(f"unknown tier {name!r} (tiers: {', '.join(sorted(self.tiers))})")
        return self.models[self.tiers[name]]

    def resolve(self, model_id: str, on: date) -> tuple[ModelSpec, list[str]]:
        """The model to use in place of ``model_id`` on a date, following successors past
        retired models; also the retired ids it passed."""
        spec = self.get(model_id)
        passed: list[str] = []
        while spec.is_retired(on):
            passed.append(spec.id)
            if spec.lifecycle.successor is None or spec.lifecycle.successor in passed:
                break
            spec = self.get(spec.lifecycle.successor)
        return spec, passed

    def most_expensive(self, model_ids: list[str]) -> ModelSpec:
        """Of these models, the one with the highest input + output list price."""
        specs = [self.get(m) for m in model_ids]
        return max(specs, key=lambda s: (s.price.input + s.price.output, s.price.output))


def _read_yaml(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None


def first_error(exc: ValidationError) -> str:
    """One line naming the field and what is wrong with it."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    # A validator's own message is already a sentence: drop pydantic's "Value error, ".
    return f"{loc}: {err['msg'].removeprefix('Value error, ')}"


def parse_registry(data: Any, source: str) -> Registry:
    """Validate registry data, with a one-line error naming the source and field."""
    try:
        return Registry.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {first_error(exc)}") from None


@lru_cache(maxsize=8)
def _load_cached(path: str | None, mtime: float = 0.0) -> Registry:
    if path is None:
        text = resources.files("polyroute.config").joinpath("models.yaml").read_text("utf-8")
        return parse_registry(yaml.safe_load(text), "models.yaml (built in)")
    return parse_registry(_read_yaml(Path(path), "the model registry"), path)


def load_registry(path: str | Path | None = None) -> Registry:
    """The registry from ``path``, else ``$POLYROUTE_MODELS``, else the built-in one.

    Read once per process (and so once per Lambda container)."""
    chosen = path if path is not None else os.environ.get(MODELS_ENV) or None
    if chosen is None:
        return _load_cached(None)
    return _load_cached(str(chosen), file_mtime(Path(chosen)))


def file_mtime(path: Path) -> float:
    """A file's modification time, so an edited file is read again; 0 if it is missing."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
