"""The README says what is true: the samplers that run, every extra, the Python snippet CI
runs in the lean install, and the exit codes the commands use."""

from __future__ import annotations

import re
import tomllib

from comfyc.cli.commands.common import EXTRAS
from comfyc.runtime.nodes import SAMPLER_NAMES
from comfyc.runtime.samplers import SUPPORTED_SAMPLERS
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_every_sampler_is_listed_and_runs() -> None:
    """All of ComfyUI's samplers run, and the README names each (variants by family)."""
    assert set(SUPPORTED_SAMPLERS) == set(SAMPLER_NAMES)
    assert f"all {len(SAMPLER_NAMES)} of ComfyUI's KSampler samplers" in README
    words = set(re.findall(r"[a-z0-9_]+", README))
    families = ("res_multistep_", "gradient_estimation_")
    for name in SAMPLER_NAMES:
        if name.endswith("_gpu") or name.startswith(families):
            continue
        assert name in words, name
    assert "samplers are implemented" not in README


def test_every_extra_is_documented() -> None:
    """The Installing table lists every extra of pyproject.toml; the CLI knows each one's
    packages for its "needs the … extra" messages (all but dev)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = set(project["optional-dependencies"])
    for extra in extras:
        assert f"| `{extra}` |" in README, extra
    assert set(EXTRAS) == extras - {"dev", "gpu"}


def test_python_snippet_is_what_ci_runs_in_the_lean_install() -> None:
    """The snippet's load and run lines are the ones `make wheel-check` runs without torch."""
    block = README.split("```python\nimport comfyc.runtime\n", 1)[1].split("```", 1)[0]
    check = (REPO / ".ci" / "wheel_check").read_text()
    for line in block.splitlines()[:2]:
        code = line.split("#", 1)[0].strip()
        assert code and code in check, code
    assert 'result.images["image"]' in block and "result.files" in block


def test_install_section_names_the_forms_that_work() -> None:
    """comfyc is installed from a clone or a built wheel (it is on no index)."""
    assert "python -m build" in README
    assert "pip install 'dist/comfyc-0.1.0-py3-none-any.whl[cpu]'" in README
    assert "pip install -c constraints.txt -e '.[compiler,cpu]'" in README
