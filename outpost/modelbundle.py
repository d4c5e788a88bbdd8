"""A model bundle: a `.tflite` file with its manifest and a sample, as one folder.

    model.tflite   the model: full-integer quantized (int8 in, int8 out)
    model.json     the manifest: name, version, sha256, size, labels, tensors, accuracy
    sample.json    an input and the output the model must give for it

Both sides read bundles: the agent installs and runs them, the hub checks and signs
them. `check_upload` is the hub's rule for an uploaded bundle, which `outpost-hub models
upload` applies too before it sends one. Nothing here imports an inference runtime.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from msgspec import Meta

from outpost import schema
from outpost.schema import FINITE, Struct

MODEL_FILE = "model.tflite"
MANIFEST_FILE = "model.json"
SAMPLE_FILE = "sample.json"
MAX_MODEL_BYTES = 64 << 20
MAX_SIDECAR_BYTES = 4 << 20

T = TypeVar("T")

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
VERSION_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}")
# A model's folder holds its versions and the file naming the active one (the device's
# model directory, edge/inference/directory.py): no version may take that file's name.
RESERVED_VERSIONS = frozenset({"active"})


class BundleError(ValueError):
    """A bundle is unreadable or inconsistent; the message names the file and the fault."""


class UploadRefusedError(BundleError):
    """An upload the hub refuses. `part` is the one at fault (model, manifest or sample,
    as the upload's form names them), `path` the key inside it ("" for the whole part);
    the message names both as the hub answers: "manifest.labels: <problem>"."""

    def __init__(self, part: str, path: str, problem: str) -> None:
        super().__init__(f"{part}.{path}: {problem}" if path else f"{part}: {problem}")
        self.part = part
        self.path = path
        self.problem = problem


class ClaimMismatchError(UploadRefusedError):
    """The manifest gives a `sha256` or `size` (its `path`) that is not the model file's."""

    def __init__(self, field: str, claimed: object, actual: object) -> None:
        problem = f"{claimed!r} does not match the uploaded file ({actual!r})"
        super().__init__("manifest", field, problem)
        self.claimed = claimed
        self.actual = actual


class TensorSpec(Struct, frozen=True):
    """One quantized tensor: real value = scale * (q - zero_point)."""

    shape: Annotated[list[int], Meta(max_length=8, description="dimensions, batch first")]
    dtype: Annotated[Literal["int8"], Meta(description="element type; only int8 models are run")]
    scale: Annotated[float, Meta(ge=0, le=FINITE, description="quantization scale")]
    zero_point: Annotated[int, Meta(ge=-128, le=127, description="quantization zero point")]
    description: Annotated[str, Meta(max_length=512, description="what the values mean")] = ""


class Manifest(Struct, frozen=True):
    """What a model is and how to feed it; `sha256` and `size` pin the model file."""

    name: Annotated[str, Meta(max_length=64, description="model name, e.g. vibration-anomaly")]
    version: Annotated[str, Meta(max_length=32, description="model version, e.g. 1.0.0")]
    sha256: Annotated[str, Meta(max_length=64, description="sha256 of model.tflite, hex")]
    size: Annotated[int, Meta(ge=1, le=MAX_MODEL_BYTES, description="bytes of model.tflite")]
    labels: Annotated[list[str], Meta(max_length=1000, description="one label per output score")]
    input: Annotated[TensorSpec, Meta(description="the input tensor")]
    output: Annotated[TensorSpec, Meta(description="the output tensor (one score per label)")]
    normal_label: Annotated[
        str,
        Meta(max_length=64, description="the label of the normal case (not reported as flagged)"),
    ] = ""
    description: Annotated[str, Meta(max_length=1024, description="what the model is for")] = ""
    accuracy: Annotated[dict[str, Any], Meta(max_length=32, description="held-out accuracy")] = {}
    training: Annotated[dict[str, Any], Meta(max_length=32, description="how it was trained")] = {}
    explain_baseline: (
        Annotated[
            float,
            Meta(
                ge=-FINITE,
                le=FINITE,
                description="the real input value that stands for 'nothing there' when the "
                "model is explained (occlusion and KernelSHAP put it in place of what they "
                "hide); unset: an image's own mean, 0 for a series or a vector",
            ),
        ]
        | None
    ) = None

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise schema.SchemaError("name", f"must match {NAME_PATTERN.pattern}")
        if not VERSION_PATTERN.fullmatch(self.version):
            raise schema.SchemaError("version", f"must match {VERSION_PATTERN.pattern}")
        if self.version in RESERVED_VERSIONS:
            raise schema.SchemaError(
                "version", f"{self.version!r} is reserved (the name of a file beside versions)"
            )
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise schema.SchemaError("sha256", "must be 64 lowercase hex digits")
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise schema.SchemaError("labels", "must be a non-empty list of distinct labels")
        if self.output.shape[-1:] != [len(self.labels)] or math.prod(self.output.shape) != len(
            self.labels
        ):
            raise schema.SchemaError(
                "output.shape",
                f"must hold one score per label ({len(self.labels)}), got {self.output.shape}",
            )
        if self.normal_label and self.normal_label not in self.labels:
            raise schema.SchemaError("normal_label", f"{self.normal_label!r} is not a label")

    def to_dict(self) -> dict[str, Any]:
        plain = schema.dump(self)
        if plain["explain_baseline"] is None:
            # Unset, it is left out: agents from before the field refuse a manifest that
            # names it (unknown fields are refused), so only a model that sets it needs
            # a newer agent.
            del plain["explain_baseline"]
        return plain


class Expected(Struct, frozen=True):
    label: Annotated[str, Meta(max_length=64, description="the top label")]
    output: Annotated[list[int], Meta(max_length=1000, description="the raw int8 output")]
    scores: Annotated[list[float], Meta(max_length=1000, description="the dequantized output")] = []


class Sample(Struct, frozen=True):
    """An input (raw int8 values, nested like the input shape) and what it must give."""

    input: Annotated[list[Any], Meta(max_length=1 << 20, description="nested lists of int8 values")]
    expected: Annotated[Expected, Meta(description="the output the model must give")]
    input_dtype: Annotated[Literal["int8"], Meta(description="the dtype of `input`")] = "int8"
    # Runtimes differ by a rounding step in some kernels; more than that is a fault.
    tolerance: Annotated[int, Meta(ge=0, le=255, description="int8 steps allowed per score")] = 1


@dataclass(frozen=True)
class Bundle:
    """A checked bundle folder: the model file matches its manifest."""

    folder: Path
    manifest: Manifest
    sample: Sample | None

    @property
    def model_path(self) -> Path:
        return self.folder / MODEL_FILE


def read_manifest(folder: Path) -> Manifest:
    return _load(Manifest, folder / MANIFEST_FILE)


def read_bundle(folder: Path, *, verify: bool = True) -> Bundle:
    """Read a bundle: the manifest, the sample and (`verify`) the model's size and sha256."""
    manifest = read_manifest(folder)
    sample_path = folder / SAMPLE_FILE
    sample = _load(Sample, sample_path) if sample_path.exists() else None
    if verify:
        check_model_file(folder / MODEL_FILE, manifest)
    return Bundle(folder, manifest, sample)


def check_model_file(path: Path, manifest: Manifest) -> None:
    """Refuse a model file whose size or sha256 differs from its manifest's."""
    try:
        size = path.stat().st_size
        if size != manifest.size:
            raise BundleError(
                f"{path}: {size} bytes, the manifest says {manifest.size} (truncated or replaced)"
            )
        digest = file_sha256(path)
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if digest != manifest.sha256:
        raise BundleError(f"{path}: sha256 {digest} differs from the manifest's {manifest.sha256}")


def check_upload(
    size: int, sha256: str, manifest: object, sample: object
) -> tuple[Manifest, Sample]:
    """Check an upload by the hub's rule: a model file of `size` bytes hashing to `sha256`
    (not looked at when the size is refused), with its manifest and sample documents.
    Unlike a device's bundle, the manifest may leave out `sha256` and `size`: they are the
    file's, refused only when given and wrong. Returns the manifest (completed) and the
    sample; raises `UploadRefusedError`."""
    if size == 0:
        raise UploadRefusedError("model", "", "the file is empty")
    if size > MAX_MODEL_BYTES:
        raise UploadRefusedError("model", "", f"{size} bytes, over the limit of {MAX_MODEL_BYTES}")
    if isinstance(manifest, dict):  # anything else is refused by the schema below
        for field, actual in (("sha256", sha256), ("size", size)):
            claimed = manifest.get(field)
            if claimed is not None and claimed != actual:
                raise ClaimMismatchError(field, claimed, actual)
        manifest = {**manifest, "sha256": sha256, "size": size}
    return _upload_part(Manifest, manifest, "manifest"), _upload_part(Sample, sample, "sample")


def _upload_part(cls: type[T], doc: object, part: str) -> T:
    try:
        return schema.load(cls, doc, "")
    except schema.SchemaError as exc:
        raise UploadRefusedError(part, exc.path, exc.message) from exc


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _load(cls: type[T], path: Path) -> T:
    try:
        return schema.load(cls, read_sidecar(path), "")
    except schema.SchemaError as exc:
        raise BundleError(f"{path}: {exc}") from exc


def read_sidecar(path: Path) -> Any:
    """Read a bundle's JSON file (manifest or sample), refusing (`BundleError`, naming the
    file) one over MAX_SIDECAR_BYTES or not valid JSON."""
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise BundleError(f"{path}: over {MAX_SIDECAR_BYTES} bytes")
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise BundleError(f"{path}: not valid JSON: {exc}") from exc
