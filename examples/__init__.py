"""comfyc's example workflows, shipped as package data (``comfyc.examples``).

The ``.cfy`` files here are the examples the README tours, the workflows the tests run, and
the starters ``comfyc init --template`` writes: one copy of each. ``input/`` holds the sample
image the img2img and inpaint examples read. Read them with :func:`read_text` /
:func:`path`, which work from a source checkout and from an installed wheel alike
(``importlib.resources``). ``tiny_model/`` (the tiny model's training scripts) is not part
of the package.
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable

__all__ = ["files", "read_text", "read_bytes", "names"]


def files() -> Traversable:
    """The folder of the examples."""
    return resources.files(__name__)


def read_text(name: str) -> str:
    """The text of an example (``"txt2img.cfy"``)."""
    return files().joinpath(name).read_text(encoding="utf-8")


def read_bytes(name: str) -> bytes:
    """The bytes of an example file (``"input/digit.png"``)."""
    return files().joinpath(name).read_bytes()


def names() -> list[str]:
    """The example workflows' file names."""
    return sorted(item.name for item in files().iterdir() if item.name.endswith(".cfy"))
