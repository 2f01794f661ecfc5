"""Starter workflows for ``comfyc init``: the example workflows, with a header for the file.

Every template is one of the examples that ship with comfyc (:mod:`comfyc.examples`), so a
starter is exactly a workflow the tests run. ``init`` replaces the example's leading comment
block with the example's description, the model files the workflow reads (computed from the
workflow, so they stay true after ``--ckpt``) and commands for the file it writes. With
``--ckpt`` a tiny-model starter is switched to a Stable Diffusion 1.x/2.x checkpoint through the
IR (checkpoint and LoRA names, sizes ×8 for a 512-pixel model, the input image's name); an
SDXL, Flux or SD3 starter gets the checkpoint in place of the first model it loads. Every other
comment stays as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath

__all__ = ["TEMPLATES", "Template", "descriptions", "render", "uses_input_image",
           "model_files", "replaced_by_ckpt", "TINY_CKPT", "INPUT_IMAGE"]

#: The embedded tiny model and its sample input image.
TINY_CKPT = "tiny-digits.safetensors"
INPUT_IMAGE = "digit.png"
#: Pixel sizes of the tiny model's workflows × this = sizes for a 512-pixel checkpoint.
_CHECKPOINT_SCALE = 8
_SIZE_INPUTS = ("width", "height", "x", "y")


@dataclass(frozen=True)
class Template:
    """A starter: the example it is.

    Attributes:
        example: The example's file name.
        tiny: It runs on the embedded tiny model (``--ckpt`` rescales it for a 512-pixel
            checkpoint); otherwise it names real checkpoints (SDXL) and ``--ckpt`` only
            replaces the first one (SDXL, Flux, SD3.5).
    """

    example: str
    tiny: bool = True

    def text(self) -> str:
        """The example's text."""
        from comfyc import examples

        return examples.read_text(self.example)

    @property
    def description(self) -> list[str]:
        """The example's description: its first comment paragraph, lines without ``# ``
        (up to the first empty comment line, blank line or statement)."""
        lines = []
        for line in self.text().splitlines():
            text = line[1:].strip() if line.startswith("#") else ""
            if not text:
                break
            lines.append(text)
        return lines

    @property
    def headline(self) -> str:
        """The first sentence of the example's description, as written (capitals kept)."""
        text = " ".join(self.description)
        # NOTE: a sentence ends at a full stop before a space: "Flux.1", "3.5" and "1..4" do not.
        end = re.search(r"\.(\s|$)", text)
        return (text[:end.start() + 1] if end else text) or self.example


#: ``comfyc init --template NAME`` → the example it writes.
TEMPLATES: dict[str, Template] = {
    "txt2img": Template("txt2img.cfy"),
    "img2img": Template("img2img.cfy"),
    "inpaint": Template("inpaint.cfy"),
    "hires-fix": Template("hires_fix.cfy"),
    "lora": Template("lora.cfy"),
    "area": Template("area.cfy"),
    "custom-sampling": Template("custom_sampling.cfy"),
    "upscale": Template("esrgan_hires_fix.cfy"),
    "controlnet": Template("controlnet.cfy"),
    "sdxl": Template("sdxl_txt2img.cfy", tiny=False),
    "sdxl-refiner": Template("sdxl_refiner.cfy", tiny=False),
    "sdxl-turbo": Template("sdxl_turbo.cfy", tiny=False),
    "flux": Template("flux_dev.cfy", tiny=False),
    "flux-schnell": Template("flux_schnell.cfy", tiny=False),
    "sd3": Template("sd35.cfy", tiny=False),
}


def descriptions() -> dict[str, str]:
    """Template name → its headline (the example's first comment line)."""
    return {name: template.headline for name, template in TEMPLATES.items()}


def uses_input_image(name: str) -> bool:
    """True when the template reads an input image (LoadImage)."""
    return "LoadImage(" in TEMPLATES[name].text()


def _body(text: str) -> str:
    """The example without its leading comment block."""
    lines = text.splitlines(keepends=True)
    index = 0
    while index < len(lines) and lines[index].startswith("#"):
        index += 1
    while index < len(lines) and not lines[index].strip():
        index += 1
    return "".join(lines[index:])


def _header(description: list[str], file: str, input_dir: str | None,
            files: list[tuple[str, str]]) -> str:
    stem = PurePath(file).stem
    extra = f" --input-dir {input_dir}" if input_dir else ""
    where = " --models-dir models" if files else ""
    needs = ""
    if files:
        needs = ("# Model files it reads from the models folder (--models-dir or "
                 "$COMFYC_MODELS):\n" + "".join(f"#   {folder}/{name}\n"
                                                for folder, name in files) + "#\n")
    return ("".join(f"# {line}\n" for line in description) + "#\n" + needs +
            f"#   comfyc check {file}{where}\n"
            f"#   comfyc run {file}{where} --output output{extra}\n"
            f"#   comfyc compile {file}{where} -o {stem}.comfyc && comfyc run {stem}.comfyc"
            f"{extra}\n"
            f"#   comfyc viz {file} -o {stem}.html\n#\n"
            f"# Params (`param ...`) stay runtime inputs: `comfyc run ... --param seed=7`.\n\n")


def _for_checkpoint(ckpt: str, lora: str, image: str) -> Callable[[object], None]:
    """An IR edit: the tiny model's workflow made for a 512-pixel checkpoint."""
    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.ir import Param, Value

    catalog = default_catalog()

    def edit(graph: object) -> None:
        for node in graph.nodes:  # type: ignore[attr-defined]
            schema = catalog.get(node.class_type)
            for name, value in list(node.inputs.items()):
                spec = schema.input(name) if schema is not None else None
                if spec is None or isinstance(value, (Value, Param)):
                    continue
                if spec.files == "checkpoints":
                    graph.set_input(node, name, ckpt)  # type: ignore[attr-defined]
                elif spec.files == "loras":
                    graph.set_input(node, name, lora)  # type: ignore[attr-defined]
                elif spec.files == "input":
                    graph.set_input(node, name, image)  # type: ignore[attr-defined]
                elif spec.type == "INT" and name in _SIZE_INPUTS and isinstance(value, int):
                    graph.set_input(node, name,  # type: ignore[attr-defined]
                                    value * _CHECKPOINT_SCALE)

    return edit


def render(name: str, *, file: str = "workflow.cfy", ckpt: str | None = None,
           lora: str | None = None, input_dir: str | None = None) -> str:
    """The starter ``name`` as the text of ``file``.

    Args:
        name: A key of :data:`TEMPLATES`.
        file: The path it will be written to (named in its header's commands).
        ckpt: A checkpoint in the models folder instead of the embedded tiny model (for
            the SDXL starters: instead of the first checkpoint they name).
        lora: The LoRA name (default: the tiny model's, or ``my-lora.safetensors`` with
            ``ckpt``).
        input_dir: The input folder its LoadImage reads from, for the header's commands.
    """
    template = TEMPLATES[name]
    body = _body(template.text())
    image = uses_input_image(name)
    description = template.description
    if not template.tiny:
        if ckpt is not None:
            folder, first = _first_checkpoint(body, file)
            body = _rewrite(body, lambda graph: _replace_files(graph, folder, first, ckpt),
                            file)
            description = [template.headline,
                           f"For {ckpt} in place of {folder}/{first}."]
        if lora is not None:
            body = _rewrite(body, lambda graph: _set_files(graph, "loras", lora), file)
    elif ckpt is None:
        if not any("tiny model" in line for line in description):
            description = [*description, "For comfyc's embedded tiny model: 64x64 handwritten "
                                         "digits, nothing to download."]
        if lora is not None:
            body = _rewrite(body, lambda graph: _set_files(graph, "loras", lora), file)
    else:
        description = [template.headline,
                       f"For checkpoint {ckpt}: sizes are for a 512-pixel model; change the "
                       f"prompts."]
        body = _rewrite(body, _for_checkpoint(ckpt, lora or "my-lora.safetensors",
                                              "input.png"), file)
    return _header(description, file, input_dir if image else None,
                   model_files(body, file)) + body


def model_files(text: str, file: str = "workflow.cfy") -> list[tuple[str, str]]:
    """The model files a DSL workflow reads from the models folder, in order, once each.

    Returns:
        ``(folder, name)`` pairs, e.g. ``("checkpoints", "sd_xl_base_1.0.safetensors")``;
        the models that ship with comfyc (the tiny model and its LoRA) and input images are
        left out.
    """
    from comfyc.compiler.catalog import default_catalog
    from comfyc.frontends.dsl import parse_dsl
    from comfyc.runtime.model_paths import EMBEDDED_MODELS, MODEL_KINDS

    catalog = default_catalog()
    found: list[tuple[str, str]] = []
    for node in parse_dsl(text, file, catalog).nodes:
        schema = catalog.get(node.class_type)
        for spec in schema.inputs if schema is not None else []:
            value = node.inputs.get(spec.name)
            if (spec.files in MODEL_KINDS and isinstance(value, str)
                    and value not in EMBEDDED_MODELS.get(spec.files, {})
                    and (spec.files, value) not in found):
                found.append((spec.files, value))
    return found


def replaced_by_ckpt(name: str) -> tuple[str, str | None]:
    """The models folder and file that ``--ckpt`` replaces in template ``name``."""
    template = TEMPLATES[name]
    if template.tiny:
        return "checkpoints", TINY_CKPT
    return _first_checkpoint(_body(template.text()), template.example)


def _rewrite(text: str, edit: Callable[[object], None], file: str) -> str:
    from comfyc.frontends.dsl.format import rewrite_source

    return rewrite_source(text, edit, file)  # type: ignore[arg-type]


def _first_checkpoint(text: str, file: str) -> tuple[str, str | None]:
    """The models folder and name of the first checkpoint a workflow loads (its diffusion
    model when it loads no checkpoint: UNETLoader)."""
    from comfyc.compiler.catalog import default_catalog
    from comfyc.frontends.dsl import parse_dsl

    catalog = default_catalog()
    graph = parse_dsl(text, file, catalog)
    for folder in ("checkpoints", "diffusion_models"):
        for node in graph.nodes:
            schema = catalog.get(node.class_type)
            for spec in schema.inputs if schema is not None else []:
                if spec.files == folder and isinstance(node.inputs.get(spec.name), str):
                    return folder, node.inputs[spec.name]
    return "checkpoints", None


def _replace_files(graph: object, folder: str, old: str | None, new: str) -> None:
    """Replace the file name ``old`` of one models folder by ``new``."""
    from comfyc.compiler.catalog import default_catalog

    catalog = default_catalog()
    for node in graph.nodes:  # type: ignore[attr-defined]
        schema = catalog.get(node.class_type)
        for spec in schema.inputs if schema is not None else []:
            if spec.files == folder and node.inputs.get(spec.name) == old:
                graph.set_input(node, spec.name, new)  # type: ignore[attr-defined]


def _set_files(graph: object, folder: str, value: str) -> None:
    """Set every file input of one models folder to ``value``."""
    from comfyc.compiler.catalog import default_catalog

    catalog = default_catalog()
    for node in graph.nodes:  # type: ignore[attr-defined]
        schema = catalog.get(node.class_type)
        for spec in schema.inputs if schema is not None else []:
            if spec.files == folder and isinstance(node.inputs.get(spec.name), str):
                graph.set_input(node, spec.name, value)  # type: ignore[attr-defined]
