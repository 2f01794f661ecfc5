"""Issue #19 item 10: putting a compiled artifact in place, and what killed compiles leave.

``compile_graph`` writes ``.NAME.tmp-PID`` and moves it to ``NAME``. Two compiles to one
``-o`` raced in the replace step (``ENOTEMPTY``, an ``.old-PID`` folder left behind) and a
reader found no artifact 14.6% of the time; killed compiles left temporaries forever.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from comfyc.compiler.lowering.artifact import _remove_stale, _replace_dir


def _artifact(path: Path, label: str) -> Path:
    (path / "stages").mkdir(parents=True)
    (path / "manifest.json").write_text(label)
    (path / "stages" / "unet.onnx").write_bytes(label.encode() * 100)
    return path


def test_replace_swaps_in_one_step(tmp_path: Path) -> None:
    """The new artifact takes the old one's place and the old one is deleted."""
    output = _artifact(tmp_path / "a.comfyc", "old")
    _replace_dir(_artifact(tmp_path / ".a.comfyc.tmp-1", "new"), output)
    assert (output / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.comfyc"]


def test_readers_always_find_an_artifact_and_racing_compiles_finish(tmp_path: Path) -> None:
    """Four writers replace one artifact 50 times each while a reader looks at it: the reader
    always finds a whole artifact, no writer fails, nothing is left beside it."""
    output = _artifact(tmp_path / "a.comfyc", "first")
    errors: list[BaseException] = []
    missing = 0
    done = threading.Event()

    def write(worker: int) -> None:
        try:
            for n in range(50):
                tmp = _artifact(tmp_path / f".a.comfyc.tmp-{worker}", f"{worker}-{n}")
                _replace_dir(tmp, output)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def read() -> None:
        nonlocal missing
        while not done.is_set():
            if not (output / "manifest.json").is_file():
                missing += 1

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reader.join()
    assert not errors, errors
    assert missing == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.comfyc"]
    assert (output / "manifest.json").read_text().endswith("-49")


def test_first_compiles_to_a_new_output_race(tmp_path: Path) -> None:
    """Two compiles finishing at once where there was no artifact: both succeed."""
    output = tmp_path / "b.comfyc"
    tmps = [_artifact(tmp_path / f".b.comfyc.tmp-{n}", str(n)) for n in range(2)]
    threads = [threading.Thread(target=_replace_dir, args=(t, output)) for t in tmps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (output / "manifest.json").read_text() in ("0", "1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.comfyc"]


def test_leftovers_of_dead_compiles_are_removed(tmp_path: Path) -> None:
    """A killed compile's temporaries go when the next compile to that name starts; a live
    compile's stay, and other names' are not touched."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    gone = int(dead.stdout)
    left = [_artifact(tmp_path / f".a.comfyc.tmp-{gone}", "x"),
            _artifact(tmp_path / f".a.comfyc.old-{gone}", "x")]
    live = _artifact(tmp_path / f".a.comfyc.tmp-{os.getppid()}", "x")
    other = _artifact(tmp_path / f".b.comfyc.tmp-{gone}", "x")
    _remove_stale(tmp_path, "a.comfyc")
    assert not any(p.exists() for p in left)
    assert live.exists() and other.exists()
