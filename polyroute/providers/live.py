"""Live providers: which are installed and have credentials. Filled by the providers issue."""

from __future__ import annotations


def available(provider: str) -> bool:
    """True when ``provider`` can make real calls here (none are wired in yet)."""
    return False
