"""No output is ever silently overwritten (issue #19, item 7).

Concurrent saves into one folder — threads, and separate processes as `comfyc run`s are — keep
every picture; prefixes that ComfyUI's counter rule never matched (a trailing ``/``,
``%batch_num%``) take new counters instead of replacing files; a backslash is a folder
separator, so no saved name holds one.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyc.runtime import image_io
from comfyc.runtime.image_io import ImageIOError, save_images

WORKERS, SAVES = 4, 50


def _picture(value: int) -> np.ndarray:
    """A 4x4 picture whose pixels encode ``value`` (so every saved file is distinct)."""
    pixels = np.zeros((1, 4, 4, 3), np.float32)
    pixels[0, 0, 0] = [(value % 256) / 255, (value // 256 % 256) / 255, 1.0]
    return pixels


def _value(path: Path) -> int:
    red, green, _ = np.asarray(Image.open(path))[0, 0]
    return int(red) + 256 * int(green)


def _save_many(folder: str, worker: int, prefix: str) -> list[str]:
    names = []
    for index in range(SAVES):
        result = save_images(_picture(worker * SAVES + index), folder, prefix)
        names.append(result[0]["filename"])
    return names


def _assert_all_kept(folder: Path, names: list[str], prefix: str) -> None:
    files = sorted(p for p in folder.iterdir() if p.name.startswith(prefix))
    assert len(names) == len(set(names)) == WORKERS * SAVES
    assert sorted(p.name for p in files) == sorted(names)
    assert sorted(_value(p) for p in files) == list(range(WORKERS * SAVES))
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "temporaries left"


def test_processes_saving_into_one_folder_keep_every_file(tmp_path: Path) -> None:
    """4 processes x 50 saves with one prefix: 200 files, every picture on disk once."""
    context = multiprocessing.get_context("fork")
    with context.Pool(WORKERS) as pool:
        results = pool.starmap(_save_many, [(str(tmp_path), w, "run") for w in range(WORKERS)])
    _assert_all_kept(tmp_path, [n for names in results for n in names], "run")


def _threads(folder: Path, prefix: str) -> list[str]:
    results: list[list[str]] = [[] for _ in range(WORKERS)]

    def work(worker: int) -> None:
        results[worker] = _save_many(str(folder), worker, prefix)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [n for names in results for n in names]


def test_threads_saving_into_one_folder_keep_every_file(tmp_path: Path) -> None:
    """4 threads x 50 saves (a server's workers): 200 files."""
    _assert_all_kept(tmp_path, _threads(tmp_path, "thread"), "thread")


def test_without_the_lock_nothing_is_overwritten(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Where folder locks do not work, the link that publishes a file still never replaces
    one: colliding saves take the next counter."""
    import contextlib

    monkeypatch.setattr(image_io, "_folder_lock", lambda folder: contextlib.nullcontext())
    _assert_all_kept(tmp_path, _threads(tmp_path, "nolock"), "nolock")


def test_without_hard_links_nothing_is_overwritten(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem without hard links: the name is claimed with O_EXCL instead."""
    def no_link(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "links not supported")

    monkeypatch.setattr(image_io.os, "link", no_link)
    (tmp_path / "x_00002_.png").write_bytes(b"keep me")
    first = save_images(_picture(1), tmp_path, "x")
    monkeypatch.setattr(image_io, "_next_counter", lambda folder, name: 1)
    second = save_images(_picture(2), tmp_path, "x")
    assert [first[0]["filename"], second[0]["filename"]] == ["x_00003_.png", "x_00001_.png"]
    third = save_images(_picture(3), tmp_path, "x")
    assert third[0]["filename"] == "x_00004_.png"
    assert (tmp_path / "x_00002_.png").read_bytes() == b"keep me"
    assert [_value(tmp_path / f"x_0000{i}_.png") for i in (3, 1, 4)] == [1, 2, 3]


def test_prefix_ending_in_slash_counts_up(tmp_path: Path) -> None:
    """"sub/" saves as sub_NNNNN_.png (ComfyUI's normpath) and the counter now counts."""
    names = [save_images(_picture(i), tmp_path, "sub/")[0]["filename"] for i in range(3)]
    assert names == ["sub_00001_.png", "sub_00002_.png", "sub_00003_.png"]
    assert [_value(tmp_path / n) for n in names] == [0, 1, 2]


def test_batch_num_prefix_never_overwrites(tmp_path: Path) -> None:
    """%batch_num% names never match the counter scan; the link still refuses to replace."""
    first = save_images(np.concatenate([_picture(1), _picture(2)]), tmp_path, "b%batch_num%")
    second = save_images(np.concatenate([_picture(3), _picture(4)]), tmp_path, "b%batch_num%")
    names = [r["filename"] for r in first + second]
    assert names == ["b0_00001_.png", "b1_00002_.png", "b0_00002_.png", "b1_00003_.png"]
    assert [_value(tmp_path / n) for n in names] == [1, 2, 3, 4]


def test_backslash_separates_folders(tmp_path: Path) -> None:
    """"a\\b" saves b_00001_.png in subfolder a: no name holds a backslash."""
    result = save_images(_picture(1), tmp_path, "a\\b")
    assert result == [{"filename": "b_00001_.png", "subfolder": "a", "type": "output"}]
    assert (tmp_path / "a" / "b_00001_.png").is_file()


@pytest.mark.parametrize("prefix, message", [
    ("", "names no file"), (".hidden", "hidden"), ("sub/.cache/x", "hidden"),
    ("..", "outside the output folder"), ("a/../../x", "outside the output folder"),
])
def test_unusable_prefixes_are_refused(tmp_path: Path, prefix: str, message: str) -> None:
    """Empty, hidden and escaping prefixes fail with a message naming no server folder."""
    with pytest.raises(ImageIOError, match=message) as info:
        save_images(_picture(1), tmp_path, prefix)
    assert str(tmp_path) not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_prefix_folder_that_is_a_file(tmp_path: Path) -> None:
    """A prefix whose folder is an existing file is an ImageIOError, not an OSError."""
    (tmp_path / "taken").write_bytes(b"")
    with pytest.raises(ImageIOError, match="a file of that name"):
        save_images(_picture(1), tmp_path, "taken/x")


def test_no_lock_file_appears(tmp_path: Path) -> None:
    """The lock is taken on the folder itself: the folder holds only the outputs."""
    save_images(_picture(1), tmp_path, "only")
    assert os.listdir(tmp_path) == ["only_00001_.png"]


def test_unchanged_folder_is_not_listed_again(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """After a save, the next save into the unchanged folder knows its counter without
    listing the folder (issue #22); a folder changed since (another program's file, here
    with a later modification time) is listed again and its counters counted."""
    listed: list[str] = []
    real = os.listdir

    def listdir(path: object) -> list[str]:
        listed.append(str(path))
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(image_io.os, "listdir", listdir)
    assert save_images(_picture(1), tmp_path, "c")[0]["filename"] == "c_00001_.png"
    assert save_images(_picture(2), tmp_path, "c")[0]["filename"] == "c_00002_.png"
    assert len(listed) == 1
    (tmp_path / "c_00041_.png").write_bytes(b"not ours")
    stat = os.stat(tmp_path)
    os.utime(tmp_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert save_images(_picture(3), tmp_path, "c")[0]["filename"] == "c_00042_.png"
    assert len(listed) == 2
    assert save_images(_picture(4), tmp_path, "d")[0]["filename"] == "d_00001_.png"
    assert len(listed) == 3  # another name: its own scan
