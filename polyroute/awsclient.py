"""A boto3 client made on first use (or injected), so importing a module that talks to AWS
costs no boto3 import: the CLI and the local engine never pay for it."""

from __future__ import annotations

from typing import Any


class LazyClient:
    """Holds the boto3 client of ``service``; subclasses set ``service``."""

    service = ""

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client(self.service)
        return self._client
