"""The DSL's syntax and semantics: what each construct means in the IR, and where it is."""

from __future__ import annotations

import pytest

from comfyc.compiler.catalog import Catalog, InputSpec, NodeSchema, OutputSpec, default_catalog
from comfyc.compiler.errors import WorkflowErrors
from comfyc.compiler.ir import MISSING, Param, Value
from comfyc.frontends.dsl import parse_dsl
from comfyc.frontends.dsl.parse import parse_module

TXT2IMG = '''\
# a comment
param seed: INT = 42 [min=0, max=18446744073709551615,]
param prompt: STRING = """
a handwritten "digit"
seven
"""

@"4:1" @title("Loader") model, clip, _ = CheckpointLoaderSimple(ckpt_name="tiny.safetensors")
pos = CLIPTextEncode(text=prompt, clip=clip)
neg = CLIPTextEncode(text="", clip=clip,)   # trailing comma
latent = EmptyLatentImage(width=64, height=64, batch_size=1)
@3 latent = KSampler(model=model, seed=seed, steps=20, cfg=5, sampler_name="euler",
                     scheduler="normal", positive=pos, negative=neg, latent_image=latent,
                     denoise=1.0)
output result: LATENT = latent
'''


def test_statements_become_nodes_params_and_outputs() -> None:
    """Params, unpacking, `_`, ids, titles, rebinding and outputs all land in the IR."""
    graph = parse_dsl(TXT2IMG, "t.cfy")
    assert [n.id for n in graph.nodes] == ["4:1", "5", "6", "7", "3"]
    loader, pos, neg, empty, sampler = graph.nodes
    assert loader.title == "Loader" and loader.meta["dsl"] == {"bind": ["model", "clip", "_"]}
    assert pos.meta["dsl"] == {"auto_id": True, "bind": "pos"}
    seed = graph.params["seed"]
    assert (seed.type, seed.default, seed.min, seed.max) == ("INT", 42, 0, 2**64 - 1)
    assert graph.params["prompt"].default == 'a handwritten "digit"\nseven'
    assert sampler.inputs["seed"] is seed and pos.inputs["text"] is graph.params["prompt"]
    assert sampler.inputs["latent_image"] is empty.outputs[0]  # Read before the rebinding.
    assert isinstance(sampler.inputs["cfg"], int) and sampler.inputs["cfg"] == 5
    assert graph.outputs == {"result": sampler.outputs[0]}
    assert list(sampler.inputs)[:3] == ["model", "seed", "steps"]  # Source order kept.


def test_locations_of_nodes_inputs_and_params() -> None:
    """Every node, input and param carries its exact span."""
    graph = parse_dsl(TXT2IMG, "t.cfy")
    sampler = graph.node("3")
    loc = sampler.loc
    assert (loc.file, loc.line, loc.col, loc.end_line, loc.end_col) == ("t.cfy", 12, 13, 12, 21)
    assert loc.node_id == "3"
    seed = sampler.input_locs["seed"]
    assert (seed.line, seed.col, seed.end_col, seed.input_name) == (12, 40, 44, "seed")
    denoise = sampler.input_locs["denoise"]
    assert (denoise.line, denoise.col, denoise.end_col) == (14, 30, 33)
    param = graph.params["seed"].loc
    assert (param.line, param.col, param.end_col) == (2, 7, 11)
    prompt_text = graph.node("5").input_locs["text"]
    assert (prompt_text.line, prompt_text.col) == (9, 27)


def test_handles_select_outputs_by_name_and_index() -> None:
    """One name on a multi-output node is a handle: .NAME, [INT] and ["name"] select."""
    graph = parse_dsl(
        'ckpt = CheckpointLoaderSimple(ckpt_name="m")\n'
        'a = CLIPTextEncode(text="x", clip=ckpt.CLIP)\n'
        'b = CLIPTextEncode(text="x", clip=ckpt[1])\n'
        'c = CLIPTextEncode(text="x", clip=ckpt["CLIP"])\n')
    ckpt = graph.nodes[0]
    assert all(n.inputs["clip"] is ckpt.outputs[1] for n in graph.nodes[1:])
    assert ckpt.meta["dsl"]["bind"] == "ckpt"


def test_quoted_names_and_keywords_as_input_names() -> None:
    """Quoted class and input names, and keywords where they are plain names."""
    catalog = default_catalog().copy()
    catalog.add(NodeSchema("CR Load LoRA", [
        InputSpec("➕ Add Lora", "STRING"), InputSpec("output", "STRING"),
        InputSpec("param", "INT"), InputSpec("true", "BOOLEAN")],
        [OutputSpec("upscaled image", "IMAGE"), OutputSpec("IMAGE", "IMAGE"),
         OutputSpec("IMAGE", "IMAGE")]))
    text = ('output_image = "CR Load LoRA"("➕ Add Lora"="a", output="b", param=1, "true"=true)\n'
            'ckpt = CheckpointLoaderSimple(ckpt_name="m")\n'
            'x = VAEEncode(pixels=output_image["upscaled image"], vae=v)\n')
    with pytest.raises(WorkflowErrors) as info:  # `v` is undefined: only that is wrong.
        parse_dsl(text, "q.cfy", catalog)
    assert [e.message for e in info.value.errors] == ["undefined name 'v'"]
    graph = parse_dsl(text.replace("vae=v", "vae=ckpt.VAE"), "q.cfy", catalog)
    assert graph.nodes[2].inputs["pixels"] is graph.nodes[0].outputs[0]
    node = graph.nodes[0]
    assert node.class_type == "CR Load LoRA"
    assert dict(node.inputs) == {"➕ Add Lora": "a", "output": "b", "param": 1, "true": True}
    ambiguous = text.replace('["upscaled image"]', ".IMAGE").replace("vae=v", "vae=x")
    with pytest.raises(WorkflowErrors) as info:
        parse_dsl(ambiguous, "q.cfy", catalog)
    first = info.value.errors[0]
    assert first.message == ("output name 'IMAGE' is ambiguous: outputs 1, 2 of CR Load LoRA "
                             "are all called 'IMAGE'")
    assert first.help == "select by index: output_image[1] or output_image[2]"


def test_json_literals() -> None:
    """Literals are JSON's values: ints stay ints, floats keep their repr, lists and objects."""
    graph = parse_dsl(
        '@extra({"choose file to upload": "image", "n": [1, 2.5, -0.0, 1e-07, true, null]})\n'
        'img = LoadImage(image="C:\\\\in\\\\digit.png")\n'
        'EmptyLatentImage(width=18446744073709551615, height=0.7000000000000001, '
        'batch_size="1")\n')
    load, empty = graph.nodes
    assert load.inputs["image"] == "C:\\in\\digit.png"
    assert load.meta["extra_inputs"] == {"choose file to upload": "image",
                                         "n": [1, 2.5, -0.0, 1e-07, True, None]}
    assert empty.inputs["width"] == 2**64 - 1 and isinstance(empty.inputs["width"], int)
    assert empty.inputs["height"] == 0.7000000000000001
    assert empty.inputs["batch_size"] == "1"


def test_raw_strings_strip_one_newline_each_side() -> None:
    """\"\"\"raw\"\"\" keeps backslashes and quotes, strips one newline after/before delimiters."""
    module = parse_module('param a: STRING = """\n\nx\\(y\\) "q" # no comment\n\n"""\n'
                          'param b: STRING = """one line"""\n')
    a, b = module.statements
    assert a.default.value == '\nx\\(y\\) "q" # no comment\n'
    assert b.default.value == "one line"
    assert module.comments == []


def test_crlf_is_normalised() -> None:
    """CRLF line ends do not leak into raw strings."""
    graph = parse_dsl('param p: STRING = """\r\na\r\nb\r\n"""\r\n'
                      'c = CLIPTextEncode(text=p, clip=x)\r\n'.replace("clip=x", "clip=p"),
                      "w.cfy", _lenient())
    assert graph.params["p"].default == "a\nb"


def _lenient() -> Catalog:
    catalog = default_catalog().copy()
    catalog.add(NodeSchema("CLIPTextEncode", [InputSpec("text", "STRING"),
                                              InputSpec("clip", "STRING")],
                           [OutputSpec("CONDITIONING", "CONDITIONING")]))
    return catalog


def test_comments_are_collected_with_positions() -> None:
    """The formatter gets every comment with its line and column; '#' in strings is data."""
    module = parse_module('# one\nx = EmptyLatentImage(width=64)  # two "#"\n'
                          'y = CLIPTextEncode(text="# three")\n', with_comments=True)
    assert [(c.text, c.line, c.col) for c in module.comments] == [
        ("# one", 1, 1), ('# two "#"', 2, 33)]


def test_params_default_and_attributes() -> None:
    """A param without a default is MISSING; choices and doc are kept; unused warns."""
    graph = parse_dsl('param s: STRING [choices=["euler", "ddim"], doc="sampler"]\n'
                      'param unused: FLOAT = 1\n'
                      'KSampler(sampler_name=s)\n')
    s = graph.params["s"]
    assert s.default is MISSING and s.choices == ["euler", "ddim"] and s.doc == "sampler"
    [warning] = graph.warnings
    assert warning.kind == "unused_param" and (warning.loc.line, warning.loc.col) == (2, 7)
    assert isinstance(graph.nodes[0].inputs["sampler_name"], Param)


def test_keywords_are_contextual() -> None:
    """`param`/`output`/`true` are keywords only where a statement or value starts."""
    graph = parse_dsl('param_x = EmptyLatentImage(width=64)\n'
                      'output_y = EmptyLatentImage(width=param_x)\n'.replace(
                          "width=param_x", "width=64"))
    assert [n.meta["dsl"]["bind"] for n in graph.nodes] == ["param_x", "output_y"]


def test_default_catalogue_is_used_when_none_is_given() -> None:
    """parse_dsl without a catalogue uses the built-in one."""
    assert parse_dsl("PreviewImage()\n").nodes[0].class_type == "PreviewImage"


def test_values_link_to_the_right_output_index() -> None:
    """Unpacked names and handles give Values with the producer's output index and type."""
    graph = parse_dsl('m, c, v = CheckpointLoaderSimple(ckpt_name="x")\n'
                      'img = VAEDecode(samples=l, vae=v)\n'.replace("samples=l, ", ""))
    vae = graph.nodes[1].inputs["vae"]
    assert isinstance(vae, Value) and (vae.index, vae.type) == (2, "VAE")
