"""Spill: large values leave the Step Functions state for S3 (locally: a folder).

A value whose JSON is larger than the threshold is stored whole and replaced by a reference,
``{"$ref": "s3://bucket/key", "sha256": "...", "bytes": N}``; reading it back checks both
the hash and the size (``SpillIntegrityError``). Keys are content-addressed, so writing the
same value twice stores it once. ``boto3`` is imported only when an S3 store is made without
a client.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from polyroute.awsclient import MISSING, TAKEN, LazyClient, error_code
from polyroute.errors import ConfigError, SpillIntegrityError

DEFAULT_THRESHOLD_BYTES = 32 * 1024
REF_KEY = "$ref"


def encode(value: Any) -> bytes:
    """The canonical JSON bytes of a value (what is measured, hashed and stored)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def size_of(value: Any) -> int:
    """Bytes of a value as JSON."""
    return len(encode(value))


def is_ref(value: Any) -> bool:
    """True for a spill reference."""
    return isinstance(value, dict) and REF_KEY in value and "sha256" in value


class Store(Protocol):
    """Where spilled values live."""

    scheme: str

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key``; return its URL."""
        ...

    def get(self, url: str) -> bytes:
        """The bytes stored at ``url``."""
        ...


class S3Location(LazyClient):
    """A bucket and a key prefix, with an S3 client made on first use (or injected)."""

    service = "s3"

    def __init__(self, bucket: str, prefix: str, client: Any = None) -> None:
        super().__init__(client)
        self.bucket = bucket
        self.prefix = prefix

    def read(self, key: str) -> bytes | None:
        """The object at ``key``, or None when there is none."""
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if error_code(exc) in MISSING:
                return None
            raise
        data: bytes = obj["Body"].read()
        return data

    def head(self, key: str) -> dict[str, Any] | None:
        """The metadata of the object at ``key`` (HeadObject), or None when there is none."""
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if error_code(exc) in MISSING:
                return None
            raise
        return head

    def put_new(self, key: str, body: bytes, **extra: Any) -> bool:
        """Write ``key`` only if nothing is there (``IfNoneMatch="*"``); False when another
        writer holds it."""
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                IfNoneMatch="*",
                **extra,
            )
        except Exception as exc:
            if error_code(exc) in TAKEN:
                return False
            raise
        return True


class S3Store(S3Location):
    """Spilled values in an S3 bucket, under a prefix (server-side encrypted by the bucket)."""

    scheme = "s3"

    def __init__(self, bucket: str, prefix: str = "spill/", client: Any = None) -> None:
        super().__init__(bucket, prefix, client)

    def put(self, key: str, data: bytes) -> str:
        full = f"{self.prefix}{key}"
        self.client.put_object(
            Bucket=self.bucket, Key=full, Body=data, ContentType="application/json"
        )
        return f"s3://{self.bucket}/{full}"

    def get(self, url: str) -> bytes:
        parsed = urlparse(url)
        if parsed.scheme != "s3":
            raise ConfigError(f"not an s3:// reference: {url}")
        body = self.client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"]
        data: bytes = body.read()
        return data


class DirStore:
    """Spilled values as files in a folder (the local stand-in for the bucket)."""

    scheme = "file"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def put(self, key: str, data: bytes) -> str:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path.resolve().as_uri()

    def get(self, url: str) -> bytes:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise ConfigError(f"not a file:// reference: {url}")
        return Path(parsed.path).read_bytes()


class Spiller:
    """Replaces values above a threshold by references, and resolves references back."""

    def __init__(self, store: Store, threshold_bytes: int = DEFAULT_THRESHOLD_BYTES) -> None:
        if threshold_bytes < 256:
            raise ConfigError(f"spill threshold {threshold_bytes} B is below the 256 B minimum")
        self.store = store
        self.threshold = threshold_bytes

    def put(self, value: Any, kind: str = "value") -> dict[str, Any]:
        """Store a value unconditionally; return its reference."""
        data = encode(value)
        digest = hashlib.sha256(data).hexdigest()
        url = self.store.put(f"{kind}/{digest}.json", data)
        return {REF_KEY: url, "sha256": digest, "bytes": len(data)}

    def maybe_spill(self, value: Any, kind: str = "value", limit: int | None = None) -> Any:
        """The value itself if its JSON fits ``limit`` (default: the threshold), else a ref."""
        if is_ref(value):
            return value
        if size_of(value) <= (self.threshold if limit is None else limit):
            return value
        return self.put(value, kind)

    def resolve(self, value: Any) -> Any:
        """The value a reference stands for (checked), or the value itself."""
        if not is_ref(value):
            return value
        data = self.store.get(str(value[REF_KEY]))
        digest = hashlib.sha256(data).hexdigest()
        if digest != value["sha256"] or len(data) != int(value.get("bytes", len(data))):
            raise SpillIntegrityError(
                f"{value[REF_KEY]}: content does not match its reference "
                f"(sha256 {digest[:12]}…, {len(data)} B; expected {str(value['sha256'])[:12]}…, "
                f"{value.get('bytes')} B)"
            )
        return json.loads(data)
