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


def test_model_families_that_run_are_named() -> None:
    """The families that run are listed up front and in the table (issue #18: the README
    must not say SDXL, Flux or ControlNets "do not run yet")."""
    intro = README.split("## Two commands", 1)[0]
    for family in ("Stable Diffusion\n1.x/2.x", "SDXL (base, refiner, Turbo)", "SD3/SD3.5",
                   "Flux.1 (dev, schnell)", "ControlNets", "T2I-Adapters", "ESRGAN",
                   "custom sampling"):
        assert family in intro, family
    table = README.split("**Model families**", 1)[1].split("\n\n", 2)[1]
    for row in ("Stable Diffusion 1.x / 2.x", "SDXL base, refiner, Turbo", "SD3 / SD3.5",
                "Flux.1 dev, schnell", "ControlNets, T2I-Adapters", "upscale models"):
        assert f"\n| {row}" in table, row
    assert "do not run yet" not in README and "does not run yet" not in README


def test_every_catalogued_node_runs_as_the_readme_says() -> None:
    """"(catalogue, every one runs)": no catalogued node is refused as unrunnable."""
    from comfyc.compiler.catalog import default_catalog

    catalog = default_catalog()
    assert "(catalogue, every one runs)" in README
    refused = [name for name in catalog.names() if catalog.unrunnable_reason(name)]
    assert refused == []
    for node in ("SamplerCustomAdvanced", "ControlNetApplyAdvanced", "ImageUpscaleWithModel",
                 "UNETLoader", "TripleCLIPLoader", "FluxGuidance"):
        assert catalog.unrunnable_reason(node) is None, node
        assert node in README, node


def test_templates_and_examples_are_listed() -> None:
    """Every `comfyc init` template has its row (template, example, the model files it
    reads), and every example in examples/ is named."""
    from comfyc.cli.templates import TEMPLATES, model_files

    rows = {line.split("|")[1].strip(): line for line in README.splitlines()
            if line.startswith("| `")}
    for name, template in TEMPLATES.items():
        row = rows.get(f"`{name}`")
        assert row is not None, name
        assert f"`examples/{template.example}`" in row, name
        for folder, file in model_files(template.text(), template.example):
            assert f"{folder}/{file}" in row, (name, folder, file)
        assert ("tiny model" in row) == template.tiny, name
    for example in sorted((REPO / "examples").glob("*.cfy")):
        assert f"examples/{example.name}" in README, example.name


def test_lean_runtime_imports_only_the_cpu_extra() -> None:
    """Every third-party package the runtime imports is in the cpu extra (tokenizers for the
    T5 tokenizer included), or belongs to a backend or stage kind the lean install does not
    run (torch stages, TensorRT, OpenVINO)."""
    import ast
    import sys

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    cpu = {re.split(r"[<>=\[ ]", spec)[0].lower()
           for spec in project["optional-dependencies"]["cpu"]}
    gpu = {re.split(r"[<>=\[ ]", spec)[0].lower()
           for spec in project["optional-dependencies"]["gpu"]}
    assert "tokenizers" in cpu and "tokenizers" in gpu
    assert cpu - {"onnxruntime"} == gpu - {"onnxruntime-gpu"}
    distribution = {"PIL": "pillow"}
    optional = {"torch", "transformers", "diffusers", "tensorrt", "openvino"}
    imported: set[str] = set()
    for path in (REPO / "runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported
                   if name not in sys.stdlib_module_names and name != "comfyc"}
    assert "tokenizers" in third_party
    outside = {name for name in third_party - optional
               if distribution.get(name, name).lower() not in cpu}
    assert outside == set()
    cpu_row = next(line for line in README.splitlines() if line.startswith("| `cpu` |"))
    for package in sorted(cpu):
        assert package in cpu_row, package
