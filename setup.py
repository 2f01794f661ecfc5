"""Maps the repository's top-level folders onto the `comfyc.*` import names.

pyproject.toml holds the metadata; this file only computes the package list, since
setuptools' declarative config cannot prefix discovered packages. ``pkg/`` holds the
package's own ``__init__`` (a root folder called ``comfyc/`` would shadow the install).
"""
from setuptools import find_packages, setup

_ROOTS = ("frontends", "compiler", "runtime", "serve", "cli")
packages = ["comfyc"]
package_dir = {"comfyc": "pkg"}
for root in _ROOTS:
    packages.append(f"comfyc.{root}")
    package_dir[f"comfyc.{root}"] = root
    for sub in find_packages(root):
        packages.append(f"comfyc.{root}.{sub}")

# The example workflows and their input image ship as package data (one copy: README, tests
# and `comfyc init` all read these files); the tiny model's training scripts do not ship.
packages.append("comfyc.examples")
package_dir["comfyc.examples"] = "examples"

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={
        "comfyc.runtime": ["data/*", "models/*.safetensors"],
        "comfyc.frontends.dsl": ["*.lark"],
        "comfyc.examples": ["*.cfy", "input/*.png"],
    },
    include_package_data=True,
)
