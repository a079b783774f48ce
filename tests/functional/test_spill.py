"""Spill: values above the threshold leave as hashed references; read-back verifies them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyroute.errors import ConfigError, SpillIntegrityError
from polyroute.spill import DirStore, S3Store, Spiller, is_ref, size_of

moto = pytest.importorskip("moto")


def test_small_values_stay_inline_and_large_ones_become_references(tmp_path: Path) -> None:
    spiller = Spiller(DirStore(tmp_path), threshold_bytes=1024)
    small = {"text": "x" * 100}
    assert spiller.maybe_spill(small) is small
    big = {"text": "y" * 5000}
    ref = spiller.maybe_spill(big, "output")
    assert is_ref(ref) and set(ref) == {"$ref", "sha256", "bytes"}
    assert ref["bytes"] == size_of(big) and ref["$ref"].startswith("file://")
    assert spiller.resolve(ref) == big
    assert spiller.maybe_spill(ref) is ref  # a reference is never wrapped again


def test_a_tampered_payload_is_refused(tmp_path: Path) -> None:
    spiller = Spiller(DirStore(tmp_path), threshold_bytes=256)
    ref = spiller.put({"a": "b" * 1000}, "state")
    stored = next(tmp_path.rglob("*.json"))
    stored.write_text(json.dumps({"a": "c" * 1000}))
    with pytest.raises(SpillIntegrityError, match="does not match its reference"):
        spiller.resolve(ref)
    truncated = {**ref, "bytes": ref["bytes"] + 1}
    stored.write_text(json.dumps({"a": "b" * 1000}, separators=(",", ":")))
    with pytest.raises(SpillIntegrityError):
        spiller.resolve(truncated)


def test_s3_references_round_trip_through_the_bucket() -> None:
    with moto.mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="spill-test")
        spiller = Spiller(S3Store("spill-test", client=s3), threshold_bytes=32 * 1024)
        value = {"steps": ["z" * 40_000]}
        ref = spiller.maybe_spill(value, "state")
        assert ref["$ref"].startswith("s3://spill-test/spill/state/")
        assert spiller.resolve(ref) == value
        s3.put_object(Bucket="spill-test", Key=ref["$ref"].split("/", 3)[3], Body=b"{}")
        with pytest.raises(SpillIntegrityError):
            spiller.resolve(ref)


def test_a_threshold_too_small_for_a_reference_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Spiller(DirStore(tmp_path), threshold_bytes=10)


@settings(max_examples=50, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=300),
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=8), children, max_size=5)
        ),
        max_leaves=40,
    )
)
def test_whatever_is_spilled_reads_back_equal_and_what_stays_fits(value: object) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        spiller = Spiller(DirStore(root), threshold_bytes=256)
        out = spiller.maybe_spill(value)
        if is_ref(out):
            assert size_of(value) > 256
        else:
            assert size_of(out) <= 256
        assert spiller.resolve(out) == value
