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

IMAGE_MEDIA_TYPES: tuple[str, ...] = ("image/png", "image/jpeg", "image/gif", "image/webp")
"""The image types every provider takes (Anthropic, OpenAI and Bedrock Converse)."""
_KIND_NAMES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WebP",
}


def sniff_image(raw: bytes) -> str | None:
    """The media type the bytes' magic number says, among ``IMAGE_MEDIA_TYPES``, or None."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if raw.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if raw.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    return None


def _checked_media_type(i: int, source: str, given: str | None, raw: bytes) -> str:
    """The image's media type: the one given, if the providers take it and the bytes are
    such an image, else the one the bytes say. A real provider refuses a mismatch with a
    400, but only after classification and planning were paid for."""
    if given is not None and given.lower() not in IMAGE_MEDIA_TYPES:
        raise TaskFileError(
            f"attachments.{i}.mediaType: {given!r} is not an image type the providers accept"
            f" ({', '.join(IMAGE_MEDIA_TYPES)})"
        )
    if not raw:
        raise TaskFileError(f"attachments.{i}.{source}: the image is empty")
    found = sniff_image(raw)
    if found is None:
        raise TaskFileError(
            f"attachments.{i}.{source}: not a PNG, JPEG, GIF or WebP image"
            f" (it starts with {raw[:8]!r})"
        )
    if given is not None and given.lower() != found:
        raise TaskFileError(
            f"attachments.{i}.mediaType: {given!r} does not match the image, which is a"
            f" {_KIND_NAMES[found]} ({found})"
        )
    return found


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
        if att.path is None:
            continue
        where = Path(att.path)
        if where.is_dir():
            raise TaskFileError(
                f"{p}: attachments.{i}.path: {where.name}/ is a directory, not a file"
            )
        if not where.is_file():
            raise TaskFileError(f"{p}: attachments.{i}.path: no such file {where.name}")
    try:
        # Read now, so a bad attachment is refused naming this file, before anything runs.
        materialize(task.attachments)
    except TaskFileError as exc:
        raise TaskFileError(f"{p}: {exc}") from None
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
            media = _checked_media_type(i, "path", att.media_type, raw)
            b64 = base64.b64encode(raw).decode("ascii")
        else:
            b64 = att.data or ""
            try:
                raw = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise TaskFileError(f"attachments.{i}.data: not valid base64") from None
            media = _checked_media_type(i, "data", att.media_type, raw)
        w, h = _image_size(raw)
        image_tokens += estimate_image_tokens(w, h)
        images.append(ImageInput(media_type=media, data_b64=b64))
    return Materialized(
        documents=tuple(docs),
        images=tuple(images),
        image_tokens=image_tokens,
        document_tokens=sum(estimate_tokens(d.text) for d in docs),
    )
