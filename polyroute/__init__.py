"""polyroute: run AI tasks across several models, routed by capability and cost."""

from __future__ import annotations

__version__ = "0.1.0"
