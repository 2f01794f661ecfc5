"""Atomic writes leave files with ordinary permissions (mkstemp alone gives 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from comfyc.cli.commands.common import write_output
from comfyc.runtime.files import atomic_write, default_mode, make_tree_readable


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_uses_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        assert default_mode() == 0o640
        atomic_write(tmp_path / "a.json", "{}")
        write_output("x", str(tmp_path / "b.html"))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == 0o640
    assert _mode(tmp_path / "b.html") == 0o640
    assert (tmp_path / "b.html").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.html"]  # No leftovers.


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    atomic_write(target, b"first version, longer")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"


def test_make_tree_readable_gives_every_file_the_umask_mode(tmp_path: Path) -> None:
    """Owner-only files and folders (safetensors, mkdtemp) get the umask's modes; an
    executable file stays executable; a link is not followed."""
    root = tmp_path / "a.comfyc"
    (root / "stages").mkdir(parents=True)
    os.chmod(root / "stages", 0o700)
    (root / "constants.safetensors").write_bytes(b"x")
    os.chmod(root / "constants.safetensors", 0o600)
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o700)
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    os.chmod(outside, 0o600)
    (root / "link").symlink_to(outside)
    old = os.umask(0o022)
    try:
        make_tree_readable(root)
    finally:
        os.umask(old)
    assert _mode(root) == 0o755 and _mode(root / "stages") == 0o755
    assert _mode(root / "constants.safetensors") == 0o644
    assert _mode(root / "run.sh") == 0o755
    assert _mode(outside) == 0o600
