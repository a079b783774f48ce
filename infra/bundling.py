"""The Lambda code asset, built without Docker.

``pip install --platform manylinux2014_aarch64 --only-binary=:all:`` puts the project's
runtime dependencies (wheels for Lambda's arm64 Python) into the asset directory, then the
``polyroute`` package and the ``lambdas/`` handlers are copied beside them. boto3 is left out:
the Lambda runtime has it. With the context flag ``polyroute:bundle=source`` (tests, offline
synth) the asset is the ``lambdas/`` folder as it is, and nothing is installed.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

ROOT = Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.14"
RUNTIME = lambda_.Runtime.PYTHON_3_14
PLATFORM = "manylinux2014_aarch64"
# Provided by the Lambda runtime; bundling it would only add size.
PROVIDED = {"boto3", "botocore", "s3transfer", "jmespath"}


def requirements(extras: tuple[str, ...] = ("aws", "providers")) -> list[str]:
    """The project's runtime requirements (dependencies plus ``extras``), from pyproject."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs.extend(project.get("optional-dependencies", {}).get(extra, []))
    out: list[str] = []
    for req in reqs:
        name = req.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        if name not in PROVIDED and req not in out:
            out.append(req)
    return out


# Only the functions that call models need the vendors' SDKs (about 70 MB unzipped).
MODEL_EXTRAS = ("aws", "providers")
CORE_EXTRAS = ("aws",)


@jsii.implements(ILocalBundling)
class PipLocalBundling:
    """Bundles on this machine with pip (no Docker)."""

    def __init__(self, extras: tuple[str, ...] = MODEL_EXTRAS) -> None:
        self.extras = extras

    def try_bundle(self, output_dir: str, *, image: DockerImage, **_: Any) -> bool:
        out = Path(output_dir)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
                str(out),
                "--platform",
                PLATFORM,
                "--implementation",
                "cp",
                "--python-version",
                PYTHON_VERSION,
                "--only-binary=:all:",
                *requirements(self.extras),
            ],
            check=True,
        )
        # Dependencies of dependencies (aws-xray-sdk needs botocore) the runtime already has.
        for entry in out.iterdir():
            top = entry.name.split("-")[0].lower()
            if top in PROVIDED and (entry.is_dir() or entry.suffix == ".dist-info"):
                shutil.rmtree(entry, ignore_errors=True)
        shutil.copytree(
            ROOT / "polyroute",
            out / "polyroute",
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        for handler in (ROOT / "lambdas").glob("*.py"):
            shutil.copy2(handler, out / handler.name)
        return True


def source_hash(extras: tuple[str, ...]) -> str:
    """A hash of everything an asset is built from: the sources and the extras installed."""
    digest = hashlib.sha256(",".join(extras).encode())
    files = [
        ROOT / "pyproject.toml",
        *(ROOT / "polyroute").rglob("*"),
        *(ROOT / "lambdas").rglob("*"),
    ]
    for path in sorted(files):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def lambda_code(mode: str, extras: tuple[str, ...] = MODEL_EXTRAS) -> lambda_.Code:
    """A code asset with the project and the dependencies of ``extras``: ``pip``
    (deployable) or ``source`` (offline)."""
    if mode == "source":
        return lambda_.Code.from_asset(str(ROOT / "lambdas"))
    return lambda_.Code.from_asset(
        str(ROOT),
        exclude=[
            "*",
            "!polyroute/**",
            "!lambdas/**",
            "!pyproject.toml",
        ],
        # CDK's own fingerprint would give both assets (same sources) one hash and one bundle.
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=source_hash(extras),
        bundling=BundlingOptions(
            image=DockerImage.from_registry("public.ecr.aws/sam/build-python3.14"),
            local=PipLocalBundling(extras),
            command=["false"],
        ),
    )
