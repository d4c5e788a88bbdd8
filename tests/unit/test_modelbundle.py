"""Model bundles: a manifest that is checked, and a model file pinned by it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from outpost.modelbundle import (
    MAX_MODEL_BYTES,
    BundleError,
    ClaimMismatchError,
    UploadRefusedError,
    check_upload,
    read_bundle,
)
from tests.support import SHIPPED_MODELS


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(SHIPPED_MODELS[0], tmp_path / "bundle"))


def edit_manifest(folder: Path, **changes: object) -> None:
    path = folder / "model.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("folder", SHIPPED_MODELS, ids=lambda p: p.parent.name)
def test_every_shipped_bundle_matches_its_manifest(folder: Path) -> None:
    bundle = read_bundle(folder)

    assert (bundle.manifest.name, bundle.manifest.version) == (folder.parent.name, folder.name)
    assert bundle.manifest.size < 500 * 1024
    assert bundle.manifest.input.dtype == bundle.manifest.output.dtype == "int8"
    assert bundle.sample is not None
    assert bundle.sample.expected.label in bundle.manifest.labels
    assert bundle.manifest.normal_label in bundle.manifest.labels


def test_a_truncated_model_is_refused(bundle_copy: Path) -> None:
    model = bundle_copy / "model.tflite"
    model.write_bytes(model.read_bytes()[:-10])

    with pytest.raises(BundleError, match="truncated or replaced"):
        read_bundle(bundle_copy)


def test_a_model_with_other_bytes_is_refused(bundle_copy: Path) -> None:
    model = bundle_copy / "model.tflite"
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF
    model.write_bytes(bytes(data))

    with pytest.raises(BundleError, match=r"sha256 \w+ differs from the manifest"):
        read_bundle(bundle_copy)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"labels": ["a", "b"]}, "output.shape: must hold one score per label (2)"),
        ({"labels": ["a", "a", "b", "c"]}, "labels: must be a non-empty list of distinct"),
        ({"normal_label": "fine"}, "normal_label: 'fine' is not a label"),
        ({"name": "Bad Name"}, "name: must match"),
        ({"sha256": "xyz"}, "sha256: must be 64 lowercase hex digits"),
        ({"extra": 1}, "extra: unknown key"),
        ({"explain_baseline": "white"}, "explain_baseline"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_field(
    bundle_copy: Path, changes: dict[str, object], words: str
) -> None:
    edit_manifest(bundle_copy, **changes)

    with pytest.raises(BundleError, match=r"model\.json") as caught:
        read_bundle(bundle_copy)
    assert words in str(caught.value)


def test_a_manifest_that_is_not_json_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "model.json").write_text("{not json")

    with pytest.raises(BundleError, match=r"model\.json: not valid JSON"):
        read_bundle(bundle_copy)


def test_an_explain_baseline_is_kept_and_an_unset_one_left_out(bundle_copy: Path) -> None:
    unset = read_bundle(bundle_copy).manifest
    edit_manifest(bundle_copy, explain_baseline=0.5)
    named = read_bundle(bundle_copy).manifest

    # Left out when unset: an agent from before the field refuses a manifest naming it,
    # so releases of models that do not set it stay readable by every agent.
    assert "explain_baseline" not in unset.to_dict()
    assert named.explain_baseline == 0.5
    assert named.to_dict()["explain_baseline"] == 0.5


def upload_parts(folder: Path) -> tuple[int, str, dict[str, object], dict[str, object]]:
    """A shipped bundle as the hub receives it: the model's size and sha256, the manifest
    without them, the sample."""
    model = (folder / "model.tflite").read_bytes()
    manifest = json.loads((folder / "model.json").read_text())
    del manifest["sha256"], manifest["size"]
    sample = json.loads((folder / "sample.json").read_text())
    return len(model), hashlib.sha256(model).hexdigest(), manifest, sample


def test_an_upload_without_sha256_and_size_gets_the_files() -> None:
    size, sha256, manifest, sample = upload_parts(SHIPPED_MODELS[0])

    checked, _ = check_upload(size, sha256, manifest, sample)
    given, _ = check_upload(size, sha256, {**manifest, "sha256": sha256, "size": size}, sample)

    assert (checked.sha256, checked.size) == (sha256, size)
    assert checked == given


@pytest.mark.parametrize(
    ("size", "manifest", "sample", "part", "path", "said"),
    [
        (0, {}, {}, "model", "", "model: the file is empty"),
        (MAX_MODEL_BYTES + 1, {}, {}, "model", "", f"model: {MAX_MODEL_BYTES + 1} bytes, over"),
        (None, {"labels": []}, {}, "manifest", "labels", "manifest.labels: must be a non-empty"),
        (None, {}, {"tolerance": -1}, "sample", "tolerance", "sample.tolerance: "),
        (None, {}, [], "sample", "", "sample: expected a table, got array"),
    ],
)
def test_an_upload_refusal_names_the_part_and_key(
    size: int | None, manifest: dict[str, object], sample: object, part: str, path: str, said: str
) -> None:
    real_size, sha256, real_manifest, real_sample = upload_parts(SHIPPED_MODELS[0])
    if isinstance(sample, dict):
        sample = {**real_sample, **sample}

    with pytest.raises(UploadRefusedError) as refused:
        check_upload(
            real_size if size is None else size, sha256, {**real_manifest, **manifest}, sample
        )

    assert str(refused.value).startswith(said)
    assert (refused.value.part, refused.value.path) == (part, path)


@pytest.mark.parametrize(("field", "wrong"), [("sha256", "F" * 64), ("size", 12345)])
def test_a_given_sha256_or_size_must_be_the_files(field: str, wrong: object) -> None:
    size, sha256, manifest, sample = upload_parts(SHIPPED_MODELS[0])

    with pytest.raises(ClaimMismatchError) as refused:
        check_upload(size, sha256, {**manifest, field: wrong}, sample)

    actual = {"sha256": sha256, "size": size}[field]
    assert str(refused.value) == (
        f"manifest.{field}: {wrong!r} does not match the uploaded file ({actual!r})"
    )
    assert (refused.value.path, refused.value.claimed, refused.value.actual) == (
        field,
        wrong,
        actual,
    )
