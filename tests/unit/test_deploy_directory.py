"""What the deployer asks of the model directory: install beside the active version
without changing it, switch the active version, remove a refused one."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge.inference.directory import ModelDirectory
from outpost.modelbundle import BundleError
from tests.support import REPO, SHIPPED_MODELS

NAME = "vibration-anomaly"


def version_of(tmp_path: Path, version: str) -> Path:
    folder = Path(shutil.copytree(SHIPPED_MODELS[0], tmp_path / f"src-{version}"))
    manifest = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**manifest, "version": version}))
    return folder


def test_installing_a_higher_version_unactivated_keeps_the_default_active(
    tmp_path: Path,
) -> None:
    directory = ModelDirectory(tmp_path / "models")
    directory.install(SHIPPED_MODELS[0])
    (directory.root / NAME / "active").unlink()  # installed by hand: the highest runs
    assert directory.active(NAME) == "1.0.0"

    directory.install(version_of(tmp_path, "2.0.0"), activate=False)

    assert directory.active(NAME) == "1.0.0"
    assert directory.versions(NAME) == ["1.0.0", "2.0.0"]


def test_the_first_version_installed_unactivated_does_not_serve(tmp_path: Path) -> None:
    """A shadow candidate of a model the device does not serve yet: only a candidate,
    at the next start too, until something activates it."""
    directory = ModelDirectory(tmp_path / "models")
    directory.install(SHIPPED_MODELS[0], activate=False)
    directory.install(version_of(tmp_path, "2.0.0"), activate=False)

    assert directory.active(NAME) is None
    assert directory.entries() == []
    directory.set_active(NAME, "2.0.0")
    assert [e.version for e in directory.entries()] == ["2.0.0"]


def test_set_active_needs_an_installed_version(tmp_path: Path) -> None:
    directory = ModelDirectory(tmp_path / "models")
    directory.install(SHIPPED_MODELS[0])
    directory.install(version_of(tmp_path, "2.0.0"), activate=False)

    directory.set_active(NAME, "2.0.0")
    assert directory.active(NAME) == "2.0.0"
    with pytest.raises(BundleError, match="not installed"):
        directory.set_active(NAME, "3.0.0")
    assert directory.active(NAME) == "2.0.0"


def test_remove_refuses_the_active_version_and_takes_the_rest(tmp_path: Path) -> None:
    directory = ModelDirectory(tmp_path / "models")
    directory.install(SHIPPED_MODELS[0])
    directory.install(version_of(tmp_path, "2.0.0"), activate=False)

    with pytest.raises(BundleError, match="is the active version"):
        directory.remove(NAME, "1.0.0")
    directory.remove(NAME, "2.0.0")
    directory.remove(NAME, "9.9.9")  # absent: nothing to do

    assert directory.versions(NAME) == ["1.0.0"]
    assert sorted(p.name for p in (directory.root / NAME).iterdir()) == ["1.0.0", "active"]


def test_removing_the_only_version_of_a_never_activated_model_removes_the_model(
    tmp_path: Path,
) -> None:
    directory = ModelDirectory(tmp_path / "models")
    directory.install(SHIPPED_MODELS[0], activate=False)

    directory.remove(NAME, "1.0.0")

    assert directory.entries() == []
    assert not (directory.root / NAME).exists()


def test_entry_names_a_folder_whose_manifest_disagrees(tmp_path: Path) -> None:
    directory = ModelDirectory(tmp_path / "models")
    directory.install(SHIPPED_MODELS[0])
    shutil.copytree(directory.root / NAME / "1.0.0", directory.root / NAME / "1.0.1")

    entry = directory.entry(NAME, "1.0.1")
    assert entry.bundle is None
    assert "not the folder's vibration-anomaly 1.0.1" in entry.error
    assert directory.entry(NAME, "1.0.0").bundle is not None


def test_prune_keeps_the_active_one_what_is_asked_and_the_newest_few(tmp_path: Path) -> None:
    """A device that has seen years of roll-outs does not keep every version."""
    directory = ModelDirectory(tmp_path / "models")
    directory.install(SHIPPED_MODELS[0])  # 1.0.0
    for version in ("1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0"):
        directory.install(version_of(tmp_path, version), activate=False)
    directory.set_active(NAME, "1.2.0")

    gone = directory.prune(NAME, keep={"1.0.0"}, newest=2)

    assert gone == ["1.1.0", "1.3.0"]
    assert directory.versions(NAME) == ["1.0.0", "1.2.0", "1.4.0", "1.5.0"]
    assert directory.active(NAME) == "1.2.0"
    assert directory.prune(NAME, keep={"1.0.0"}, newest=2) == []  # nothing more to take


def test_two_installs_at_once_both_end_with_the_model_installed(tmp_path: Path) -> None:
    """Two installs of one version at once (the agent's deploy beside `outpost-agent
    models install`) shared one staging folder: one deleted the other's half copy and
    failed with "cannot read .../.1.0.0.partial/model.tflite"."""
    directory = ModelDirectory(tmp_path / "models")
    source = version_of(tmp_path, "1.0.0")
    barrier = threading.Barrier(4)

    def install() -> str:
        barrier.wait()
        return directory.install(source).manifest.version

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        done = [pool.submit(install) for _ in range(4)]
        assert [f.result(timeout=60) for f in done] == ["1.0.0"] * 4
    assert directory.versions(NAME) == ["1.0.0"]
    assert directory.active(NAME) == "1.0.0"
    assert [p.name for p in (directory.root / NAME).iterdir() if p.name.startswith(".")] == []
    assert oct((directory.root / NAME / "1.0.0").stat().st_mode & 0o777) == "0o755"


def test_a_roll_back_leaves_word_that_only_another_activation_takes_away(
    tmp_path: Path,
) -> None:
    """The deployer tells a roll-back from an operator's `models install` of the same
    version by this word: both make the version a release replaced active again."""
    directory = ModelDirectory(tmp_path / "models")
    source = {v: version_of(tmp_path, v) for v in ("1.0.0", "1.0.1", "1.0.2")}
    directory.install(source["1.0.0"])
    directory.install(source["1.0.1"])
    assert directory.rolled_back(NAME) == ""

    directory.roll_back(NAME, "1.0.1", "1.0.0")
    assert (directory.active(NAME), directory.rolled_back(NAME)) == ("1.0.0", "1.0.1")
    directory.install(source["1.0.2"], activate=False)  # a candidate
    assert directory.rolled_back(NAME) == "1.0.1"

    directory.install(source["1.0.0"])  # by hand, the version serving
    assert (directory.active(NAME), directory.rolled_back(NAME)) == ("1.0.0", "")

    directory.roll_back(NAME, "1.0.1", "1.0.0")
    directory.set_active(NAME, "1.0.2")  # a deploy
    assert (directory.active(NAME), directory.rolled_back(NAME)) == ("1.0.2", "")
    with pytest.raises(BundleError, match="not installed"):
        directory.roll_back(NAME, "1.0.2", "0.9")
    assert (directory.active(NAME), directory.rolled_back(NAME)) == ("1.0.2", "")


def test_two_processes_switching_the_active_version_take_turns(tmp_path: Path) -> None:
    """`outpost-agent models install` beside the running agent's deployer: both write
    the model's `active` file, through the same temporary name."""
    directory = ModelDirectory(tmp_path / "models")
    directory.install(SHIPPED_MODELS[0])
    directory.install(version_of(tmp_path, "2.0.0"), activate=False)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edge.inference.directory import ModelDirectory\n"
        "d = ModelDirectory(Path(sys.argv[1]))\n"
        "for i in range(300):\n"
        "    d.set_active(sys.argv[2], ('1.0.0', '2.0.0')[i % 2])\n"
    )
    root = str(directory.root)
    other = subprocess.Popen(
        [sys.executable, "-c", script, root, NAME], cwd=REPO, stderr=subprocess.PIPE
    )
    try:
        for i in range(300):
            directory.set_active(NAME, ("2.0.0", "1.0.0")[i % 2])
    finally:
        _, err = other.communicate(timeout=120)
    assert other.returncode == 0, err.decode()
    assert directory.active(NAME) in {"1.0.0", "2.0.0"}
    assert not list((directory.root / NAME).glob(".*.tmp"))


def test_a_version_is_never_removed_between_an_activations_check_and_its_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent prunes a version while `outpost-agent models install` (or a deploy in
    another process) activates it: each checks and acts in one turn, so the active file
    never names a version that was removed meanwhile."""
    directory = ModelDirectory(tmp_path / "models")
    directory.install(SHIPPED_MODELS[0])
    directory.install(version_of(tmp_path, "3.0.0"), activate=False)
    checked, go_on = threading.Event(), threading.Event()
    listed = ModelDirectory.versions

    def versions(self: ModelDirectory, name: str) -> list[str]:
        found = listed(self, name)
        if threading.current_thread().name == "activator":  # checked: held there
            checked.set()
            go_on.wait(30)
        return found

    monkeypatch.setattr(ModelDirectory, "versions", versions)
    activator = threading.Thread(
        target=directory.set_active, args=(NAME, "3.0.0"), name="activator"
    )
    activator.start()
    assert checked.wait(30)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        removal = pool.submit(directory.remove, NAME, "3.0.0")
        # In turns, the removal waits for the activation; without, it is done at once.
        with contextlib.suppress(concurrent.futures.TimeoutError):
            removal.result(timeout=2)
        go_on.set()
        activator.join(30)
        refused = removal.exception(timeout=30)

    assert isinstance(refused, BundleError)  # it is the active version now
    assert directory.active(NAME) == "3.0.0"
    assert "3.0.0" in listed(directory, NAME)
