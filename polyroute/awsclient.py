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


MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
"""Codes S3 answers for an object that is not there (GetObject, HeadObject)."""
TAKEN = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})
"""Codes of a conditional put (``IfNoneMatch="*"``) that lost: 412, or 409 while another
conditional put on the key is in flight."""


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ``ClientError`` (None for any other exception)."""
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return str(code) if code is not None else None
