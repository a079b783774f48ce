"""Reading task files and their attachments, with one-line errors that name file and field."""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from polyroute.compress import Document
from polyroute.errors import TaskFileError
from polyroute.providers.base import ImageInput
from polyroute.registry import first_error
from polyroute.schema import Attachment, Task
from polyroute.tokens import estimate_image_tokens, estimate_tokens

_MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}


def parse_task(data: Any, source: str, base_dir: Path | None = None) -> Task:
    """Validate task data; attachment paths are made relative to ``base_dir``."""
    try:
        task = Task.model_validate(data)
    except ValidationError as exc:
        raise TaskFileError(f"{source}: {first_error(exc)}") from None
    if base_dir is not None:
        for att in task.attachments:
            if att.path is not None and not Path(att.path).is_absolute():
                att.path = str((base_dir / att.path).resolve())
    return task


def load_task(path: str | Path) -> Task:
    """Read and validate a task file (JSON)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskFileError(f"{p}: no such task file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskFileError(f"{p}: cannot read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskFileError(f"{p}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    task = parse_task(data, str(p), p.parent)
    for i, att in enumerate(task.attachments):
        if att.path is not None and not Path(att.path).is_file():
            raise TaskFileError(f"{p}: attachments.{i}.path: no such file {Path(att.path).name}")
    return task


@dataclass(frozen=True)
class Materialized:
    """A task's attachments, read: documents as text, images as base64 with token costs."""

    documents: tuple[Document, ...]
    images: tuple[ImageInput, ...]
    image_tokens: int
    document_tokens: int


def _image_size(raw: bytes) -> tuple[int | None, int | None]:
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) >= 24:
        w, h = struct.unpack(">II", raw[16:24])
        return int(w), int(h)
    if raw[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(raw):
            if raw[i] != 0xFF:
                break
            marker, length = raw[i + 1], struct.unpack(">H", raw[i + 2 : i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                h, w = struct.unpack(">HH", raw[i + 5 : i + 9])
                return int(w), int(h)
            i += 2 + length
    return None, None


def materialize(attachments: list[Attachment]) -> Materialized:
    """Read every attachment (paths must already be absolute or relative to the cwd)."""
    docs: list[Document] = []
    images: list[ImageInput] = []
    image_tokens = 0
    for i, att in enumerate(attachments):
        name = att.name or (Path(att.path).name if att.path else f"attachment-{i}")
        if att.kind == "document":
            if att.path is not None:
                try:
                    text = Path(att.path).read_text(encoding="utf-8", errors="replace")
                except OSError as exc:
                    raise TaskFileError(f"attachments.{i}.path: cannot read: {exc}") from None
            else:
                text = att.data or ""
            docs.append(Document(name=name, text=text))
            continue
        if att.path is not None:
            try:
                raw = Path(att.path).read_bytes()
            except OSError as exc:
                raise TaskFileError(f"attachments.{i}.path: cannot read: {exc}") from None
            media = att.media_type or _MEDIA_TYPES.get(Path(att.path).suffix.lower())
            b64 = base64.b64encode(raw).decode("ascii")
        else:
            b64 = att.data or ""
            try:
                raw = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise TaskFileError(f"attachments.{i}.data: not valid base64") from None
            media = att.media_type
        if media is None:
            media = "image/jpeg" if raw[:2] == b"\xff\xd8" else "image/png"
        w, h = _image_size(raw)
        image_tokens += estimate_image_tokens(w, h)
        images.append(ImageInput(media_type=media, data_b64=b64))
    return Materialized(
        documents=tuple(docs),
        images=tuple(images),
        image_tokens=image_tokens,
        document_tokens=sum(estimate_tokens(d.text) for d in docs),
    )
