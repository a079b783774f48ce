"""Task files and their attachments: an image is checked (type and magic number) when it is
read, and every mistake is one line naming the task file and the attachment."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from polyroute.errors import TaskFileError
from polyroute.schema import Attachment
from polyroute.taskfile import load_task, materialize

from ..provider_fakes import PNG

PNG_BYTES = base64.b64decode(PNG)
JPEG_BYTES = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32
GIF_BYTES = b"GIF89a" + b"\x00" * 32
WEBP_BYTES = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def image(**fields: Any) -> list[Attachment]:
    return [Attachment.model_validate({"kind": "image", **fields})]


def write_task(tmp_path: Path, attachment: dict[str, Any]) -> Path:
    path = tmp_path / "task.json"
    path.write_text(json.dumps({"description": "x", "attachments": [attachment]}))
    return path


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        (
            {"data": b64(b"hello world"), "mediaType": "image/png"},
            "attachments.0.data: not a PNG, JPEG, GIF or WebP image",
        ),
        (
            {"data": PNG, "mediaType": "text/html"},
            "attachments.0.mediaType: 'text/html' is not an image type the providers accept",
        ),
        ({"data": ""}, "attachments.0.data: the image is empty"),
        (
            {"data": b64(JPEG_BYTES), "mediaType": "image/png"},
            "attachments.0.mediaType: 'image/png' does not match the image, which is a JPEG",
        ),
    ],
)
def test_an_image_that_is_not_what_it_says_is_refused(fields: dict[str, Any], said: str) -> None:
    with pytest.raises(TaskFileError) as caught:
        materialize(image(**fields))
    assert str(caught.value).startswith(said)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "media"),
    [
        (PNG_BYTES, "image/png"),
        (JPEG_BYTES, "image/jpeg"),
        (GIF_BYTES, "image/gif"),
        (WEBP_BYTES, "image/webp"),
    ],
)
def test_an_image_without_a_media_type_gets_the_one_its_bytes_say(raw: bytes, media: str) -> None:
    mat = materialize(image(data=b64(raw)))
    assert mat.images[0].media_type == media
    assert materialize(image(data=b64(raw), mediaType=media)).images[0].media_type == media


def test_an_image_file_is_typed_by_its_bytes_not_its_name(tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(JPEG_BYTES)
    assert materialize(image(path=str(tmp_path / "photo.png"))).images[0].media_type == (
        "image/jpeg"
    )


def test_a_text_file_attached_as_an_image_is_refused_naming_the_task_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "notes.png").write_text("just text")
    task = write_task(tmp_path, {"kind": "image", "path": "notes.png"})
    with pytest.raises(TaskFileError, match=r"task\.json: attachments\.0\.path: not a PNG"):
        load_task(task)


def test_an_image_path_that_is_a_directory_says_so(tmp_path: Path) -> None:
    task = write_task(tmp_path, {"kind": "image", "path": "."})
    with pytest.raises(TaskFileError) as caught:
        load_task(task)
    assert str(caught.value) == (
        f"{task}: attachments.0.path: {tmp_path.name}/ is a directory, not a file"
    )


def test_inline_data_that_is_not_base64_names_the_task_file(tmp_path: Path) -> None:
    task = write_task(tmp_path, {"kind": "image", "data": "%%%"})
    with pytest.raises(TaskFileError) as caught:
        load_task(task)
    assert str(caught.value) == f"{task}: attachments.0.data: not valid base64"


def test_the_example_image_still_loads() -> None:
    from ..conftest import EXAMPLES

    task = load_task(EXAMPLES / "vision.json")
    assert materialize(task.attachments).images[0].media_type == "image/png"
