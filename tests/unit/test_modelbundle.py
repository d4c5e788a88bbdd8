"""Model bundles: a manifest that is checked, and a model file pinned by it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from outpost.modelbundle import BundleError, read_bundle
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
