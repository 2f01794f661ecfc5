"""Maps the repository's top-level folders onto the `comfyc.*` import names.

pyproject.toml holds the metadata; this file only computes the package list, since
setuptools' declarative config cannot prefix discovered packages. ``pkg/`` holds the
package's own ``__init__`` (a root folder called ``comfyc/`` would shadow the install).

Every folder under a root that holds Python modules or data files is a package, and its data
files (the grammar, the CLIP/T5 vocabularies, the tiny model, a web page ...) ship with it.
NOTE: data-only folders are listed as packages on purpose: setuptools warns ("Package
'comfyc.runtime.data' is absent from the `packages` configuration") about data folders that
are not, since every importable folder is a package to Python.
"""

import os

from setuptools import setup

_ROOTS = ("frontends", "compiler", "runtime", "serve", "cli")
#: Never shipped: caches, editor files, compiled bytecode.
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".tmp", "~")


def _walk(root: str, name: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``{package: folder}`` and ``{package: [data file, ...]}`` for one root folder."""
    dirs: dict[str, str] = {}
    data: dict[str, list[str]] = {}
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIP_DIRS and not d.startswith("."))
        rel = os.path.relpath(folder, root)
        package = name if rel == "." else f"{name}.{rel.replace(os.sep, '.')}"
        shipped = sorted(f for f in files if not f.startswith(".")
                         and not f.endswith(_SKIP_SUFFIXES))
        if not shipped:
            continue
        dirs[package] = folder
        extra = [f for f in shipped if not f.endswith(".py")]
        if extra:
            data[package] = extra
    return dirs, data


package_dir = {"comfyc": "pkg"}
package_data: dict[str, list[str]] = {}
for _root in _ROOTS:
    _dirs, _data = _walk(_root, f"comfyc.{_root}")
    package_dir.update(_dirs)
    package_data.update(_data)

# The example workflows and their input image ship as package data (one copy: README, tests
# and `comfyc init` all read these files); the tiny model's training scripts do not ship.
package_dir["comfyc.examples"] = "examples"
package_dir["comfyc.examples.input"] = os.path.join("examples", "input")
package_data["comfyc.examples"] = ["*.cfy"]
package_data["comfyc.examples.input"] = ["*.png"]

setup(
    packages=sorted(package_dir),
    package_dir=package_dir,
    package_data=package_data,
    include_package_data=False,
)
