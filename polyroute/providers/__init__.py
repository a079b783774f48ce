"""Model providers: one module each, one small async interface (``base.Provider``)."""

from __future__ import annotations

from polyroute.providers.base import (
    ImageInput,
    ModelRequest,
    ModelResponse,
    Provider,
    register_provider,
)

__all__ = ["ImageInput", "ModelRequest", "ModelResponse", "Provider", "register_provider"]
