"""Provider keys: from the environment, or from AWS Secrets Manager by name; and redaction.

A key is looked up as ``<PROVIDER>_API_KEY`` first (``ANTHROPIC_API_KEY``, ``OPENAI_API_KEY``,
``OPENAI_COMPATIBLE_API_KEY``), then as a Secrets Manager secret named by
``POLYROUTE_SECRET_<PROVIDER>``. A secret is read once per process (once per Lambda container)
and may hold the key itself or a JSON object with an ``api_key`` field. A secret that is empty
or still holds its placeholder (``REPLACE_WITH_<PROVIDER>_API_KEY``, what the stack creates it
with) means "no key": the provider is not available and its models answer from the simulated
provider. Keys are never logged nor put in a result; ``redact`` removes anything that looks like
one from a message.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any

from polyroute.awsclient import error_code
from polyroute.errors import AuthenticationError

SECRET_ENV_PREFIX = "POLYROUTE_SECRET_"
PLACEHOLDER_PREFIX = "REPLACE_WITH_"
_JSON_KEY_FIELDS = ("api_key", "apiKey", "key")
_MIN_KNOWN_LEN = 8

_lock = threading.Lock()
# None: the secret holds no key (empty, or its placeholder).
_secret_cache: dict[str, str | None] = {}
_known_values: set[str] = set()

# Shapes of credentials that must never reach a message: Anthropic and OpenAI keys, AWS
# access key ids, bearer tokens and key-like query or header values.
_PATTERNS = (
    re.compile(r"sk-[A-Za-z0-9][A-Za-z0-9_\-]{6,}"),
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/\-]{8,}=*"),
    re.compile(r"(?i)((?:x-)?api[-_]?key[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9_.~+/\-]{16,}"),
)


def _env_suffix(provider: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", provider.upper())


def key_env(provider: str) -> str:
    """The environment variable that holds ``provider``'s key (``ANTHROPIC_API_KEY``...)."""
    return f"{_env_suffix(provider)}_API_KEY"


def secret_env(provider: str) -> str:
    """The environment variable naming ``provider``'s secret (``POLYROUTE_SECRET_OPENAI``...)."""
    return f"{SECRET_ENV_PREFIX}{_env_suffix(provider)}"


def placeholder(provider: str) -> str:
    """The value a provider's secret is created with until someone puts a key in it."""
    return f"{PLACEHOLDER_PREFIX}{_env_suffix(provider)}_API_KEY"


def is_placeholder(value: str) -> bool:
    """True when ``value`` is no key: empty, or a ``REPLACE_WITH_...`` placeholder."""
    value = value.strip()
    return not value or value.upper().startswith(PLACEHOLDER_PREFIX)


def has_api_key(provider: str, client: Any | None = None) -> bool:
    """True when a real key is configured for ``provider``.

    A secret is read to decide (once per process): one holding its placeholder or nothing is
    no key. A secret that cannot be read counts as configured, so that the call fails with an
    error naming the secret rather than quietly answering from the simulated provider."""
    if os.environ.get(key_env(provider)):
        return True
    name = os.environ.get(secret_env(provider))
    if not name:
        return False
    try:
        return secret_value(name, client) is not None
    except AuthenticationError:
        return True


def api_key(provider: str, client: Any | None = None) -> str | None:
    """``provider``'s key from the environment, else from Secrets Manager; None if neither
    (or the secret holds only its placeholder).

    ``client`` is a Secrets Manager client (tests pass a stubbed one)."""
    value = os.environ.get(key_env(provider))
    if value:
        remember(value)
        return value
    name = os.environ.get(secret_env(provider))
    if not name:
        return None
    return secret_value(name, client)


def secret_value(name: str, client: Any | None = None) -> str | None:
    """The key held by the Secrets Manager secret ``name``, read once per process; None when
    the secret is empty or holds a placeholder."""
    with _lock:
        if name in _secret_cache:
            return _secret_cache[name]
    try:
        if client is None:
            import boto3

            client = boto3.client("secretsmanager")
        resp = client.get_secret_value(SecretId=name)
    except Exception as exc:
        code = _error_code(exc)
        raise AuthenticationError(
            f"cannot read secret {name!r} from Secrets Manager ({code})"
        ) from None
    raw = resp.get("SecretString")
    if not isinstance(raw, str):
        raise AuthenticationError(f"secret {name!r} has no string value")
    value: str | None = None
    if not is_placeholder(raw):
        value = _key_from_secret(raw.strip(), name)
        if is_placeholder(value):
            value = None
        else:
            remember(value)
    with _lock:
        _secret_cache[name] = value
    return value


def _key_from_secret(raw: str, name: str) -> str:
    if not raw.startswith("{"):
        return raw
    try:
        data = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(data, dict):
        for field in _JSON_KEY_FIELDS:
            if isinstance(data.get(field), str):
                return str(data[field])
        strings = [v for v in data.values() if isinstance(v, str)]
        if len(strings) == 1:
            return strings[0]
    raise AuthenticationError(
        f"secret {name!r} is JSON without an {' / '.join(_JSON_KEY_FIELDS)} field"
    )


def _error_code(exc: Exception) -> str:
    return error_code(exc) or type(exc).__name__


def remember(value: str) -> None:
    """Redact this exact value from every message from now on."""
    if len(value) >= _MIN_KNOWN_LEN:
        with _lock:
            _known_values.add(value)


def clear_cache() -> None:
    """Forget cached secrets (tests; a rotated key in a long-lived process)."""
    with _lock:
        _secret_cache.clear()


def redact(text: str) -> str:
    """``text`` without anything that looks like a key or token."""
    with _lock:
        known = sorted(_known_values, key=len, reverse=True)
    for value in known:
        text = text.replace(value, "[redacted]")
    for pattern in _PATTERNS:
        text = pattern.sub(
            lambda m: (m.group(1) if m.re.groups else "") + "[redacted]",
            text,
        )
    return text
