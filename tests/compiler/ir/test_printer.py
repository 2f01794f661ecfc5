"""The canonical DSL printer (``str(graph)``): literals, names, ids, titles, layout."""

from __future__ import annotations

import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.ir import Graph, Param
from comfyc.compiler.ir.printer import format_literal, format_string, print_graph
from comfyc.frontends.comfy_json.api import graph_from_api
from comfyc.frontends.dsl import parse_dsl

CATALOG = default_catalog()


def _add(graph: Graph, class_type: str, node_id: str | None = None, **inputs: object):
    schema = CATALOG.get(class_type)
    assert schema is not None
    return graph.add_node(class_type, schema.output_types(), id=node_id, inputs=inputs)


@pytest.mark.parametrize(("value", "text"), [
    (0.7000000000000001, "0.7000000000000001"),
    (1e16, "1e+16"),
    (-0.0, "-0.0"),
    (8, "8"),
    (8.0, "8.0"),
    (2**64 - 1, "18446744073709551615"),
    (True, "true"),
    ("true", '"true"'),
    (None, "null"),
    ([1, "a", [None]], '[1, "a", [null]]'),
    ({"on": False, "➕": 1.5}, '{"on": false, "➕": 1.5}'),
    ("C:\\models\\x.safetensors", '"C:\\\\models\\\\x.safetensors"'),
    ("ends with \\", '"ends with \\\\"'),
    ("tab\tand \"quote\" 🎉", '"tab\\tand \\"quote\\" 🎉"'),
    ("\ud800", '"\\ud800"'),
])
def test_literals_print_as_json(value: object, text: str) -> None:
    """Literals print as JSON; floats with repr, ints exact, surrogates escaped."""
    assert format_literal(value) == text


@pytest.mark.parametrize(("value", "raw"), [
    ("line one\nline two", True),
    ("has \"\"\" inside\nx", False),
    ("\nstarts with a newline", False),
    ("ends with a newline\n", False),
    ("carriage\r\nreturn", False),
    ("one line", False),
])
def test_raw_strings_only_where_they_read_back_exactly(value: str, raw: bool) -> None:
    """Multi-line text prints raw when the raw form reads back unchanged."""
    text = format_string(value, allow_raw=True)
    assert text.startswith('"""') == raw
    graph = parse_dsl(f"param p: STRING = {text}\n", "x.cfy")
    assert graph.params["p"].default == value


def test_json_workflow_gets_readable_names_and_ids() -> None:
    """ComfyUI's default workflow: ckpt handle, positive/negative, latent, sampler, image."""
    prompt = {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 42, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"},
              "_meta": {"title": "Load Checkpoint"}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a seven", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]},
              "_meta": {"title": "Negative"}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["8", 0]}},
    }
    assert str(graph_from_api(prompt)) == '''\
@4 ckpt = CheckpointLoaderSimple(ckpt_name="m.safetensors")
@5 latent = EmptyLatentImage(width=64, height=64, batch_size=1)
@6 positive = CLIPTextEncode(text="a seven", clip=ckpt.CLIP)
@7 @title("Negative") negative = CLIPTextEncode(text="", clip=ckpt.CLIP)
@3 sampler = KSampler(
    seed=42,
    steps=20,
    cfg=8,
    sampler_name="euler",
    scheduler="normal",
    denoise=1,
    model=ckpt.MODEL,
    positive=positive,
    negative=negative,
    latent_image=latent,
)
@8 image = VAEDecode(samples=sampler, vae=ckpt.VAE)
@9 SaveImage(filename_prefix="x", images=image)
'''


def test_name_collisions_use_the_node_id() -> None:
    """A second sampler is sampler_<id>; generated names are never rebound."""
    graph = Graph()
    empty = _add(graph, "EmptyLatentImage", "5", width=64, height=64, batch_size=1)
    first = _add(graph, "LatentUpscaleBy", "12", samples=empty.outputs[0])
    second = _add(graph, "LatentUpscaleBy", "42:0", samples=first.outputs[0])
    _add(graph, "LatentUpscaleBy", "13", samples=second.outputs[0])
    assert str(graph).splitlines() == [
        "@5 latent = EmptyLatentImage(width=64, height=64, batch_size=1)",
        "@12 upscaled = LatentUpscaleBy(samples=latent)",
        '@"42:0" upscaled_42_0 = LatentUpscaleBy(samples=upscaled)',
        "@13 LatentUpscaleBy(samples=upscaled_42_0)",
    ]


def test_written_names_are_kept_and_invalid_ones_replaced() -> None:
    """Names from the DSL survive; keywords, params and non-identifiers get generated ones."""
    graph = Graph()
    graph.add_param(Param("seed", "INT", 1))
    a = _add(graph, "EmptyLatentImage", "1", width=graph.params["seed"])
    b = _add(graph, "EmptyLatentImage", "2")
    c = _add(graph, "EmptyLatentImage", "3")
    ckpt = _add(graph, "CheckpointLoaderSimple", "4", ckpt_name="m")
    a.meta["dsl"] = {"bind": "my_latent"}
    b.meta["dsl"] = {"bind": "true"}
    c.meta["dsl"] = {"bind": "seed"}
    ckpt.meta["dsl"] = {"bind": ["m", "m", "_"]}
    _add(graph, "LatentComposite", "5", samples_to=a.outputs[0], samples_from=b.outputs[0],
         x=0, y=0, feather=c.outputs[0])
    _add(graph, "VAEDecode", "6", samples=a.outputs[0], vae=ckpt.outputs[2])
    text = str(graph)
    assert "@1 my_latent = EmptyLatentImage(width=seed)" in text
    assert "@2 latent = EmptyLatentImage()" in text
    assert "@3 latent_3 = EmptyLatentImage()" in text
    assert "@4 m, _, vae = CheckpointLoaderSimple" in text
    assert str(parse_dsl(text.replace("feather=latent_3", "feather=1"), "x.cfy"))


def test_rebinding_is_kept_when_safe() -> None:
    """A written name is reused once its old value is dead, and renamed while it is alive."""
    text = ('latent = EmptyLatentImage(width=64, height=64, batch_size=1)\n'
            'latent = LatentUpscaleBy(samples=latent, upscale_method="area", scale_by=2.0)\n'
            'output image = latent\n')
    assert str(parse_dsl(text, "x.cfy")) == text.replace("output image", "\noutput image")
    graph = parse_dsl(text + 'output first = latent\n', "x.cfy")
    graph.outputs["first"] = graph.nodes[0].outputs[0]  # The old value stays alive.
    printed = str(graph)
    assert "\nupscaled = LatentUpscaleBy(samples=latent," in printed
    assert printed.endswith("output image = upscaled\noutput first = latent\n")


def test_auto_ids_print_only_when_they_would_change() -> None:
    """Ids the parser gives are left out, unless the parser would now give different ones."""
    text = ('a = EmptyLatentImage(width=64)\n'
            'b = EmptyLatentImage(width=64)\n')
    graph = parse_dsl(text, "x.cfy")
    assert str(graph) == text
    graph.remove(graph.nodes[0])  # Now "b" would be node 1 when read back: pin ids.
    assert str(graph) == "@2 b = EmptyLatentImage(width=64)\n"


def test_titles_only_when_not_the_default() -> None:
    """@title is printed only when it differs from what an export writes (the display name)."""
    graph = Graph()
    _add(graph, "VAELoader", "1", vae_name="v").title = "Load VAE"
    _add(graph, "VAELoader", "2", vae_name="v").title = "VAELoader"
    _add(graph, "VAELoader", "3", vae_name="v").title = ""
    text = str(graph)
    assert '@1 VAELoader(vae_name="v")' in text
    assert '@2 @title("VAELoader") VAELoader' in text
    assert '@3 @title("") VAELoader' in text


def test_handles_for_odd_output_names() -> None:
    """Outputs named like non-identifiers or sharing a name are selected by key or index."""
    from comfyc.compiler.catalog import NodeSchema, OutputSpec

    graph = Graph()
    schema = NodeSchema("Splitter", [], [OutputSpec("upscaled image", "IMAGE"),
                                        OutputSpec("IMAGE", "IMAGE"), OutputSpec("IMAGE", "IMAGE")])
    node = graph.add_node("Splitter", schema.output_types(), id="1")
    for i, value in enumerate(node.outputs):
        _add(graph, "PreviewImage", str(10 + i), images=value)
    assert str(graph).splitlines()[:4] == [
        "@1 splitter = Splitter()",
        '@10 PreviewImage(images=splitter["upscaled image"])',
        "@11 PreviewImage(images=splitter[1])",
        "@12 PreviewImage(images=splitter[2])",
    ]


def test_layout_sections_and_width() -> None:
    """Params, nodes and outputs are separated by a blank line; calls wrap at 100 columns."""
    text = ('param p: STRING = "x"\n\n'
            'a = CLIPTextEncode(text=p, clip=c)\n\n'
            'output o = a\n').replace("clip=c", "clip=c")
    graph = parse_dsl(text.replace(", clip=c", ""), "x.cfy")
    assert print_graph(graph) == text.replace(", clip=c", "")
    assert str(graph) == print_graph(graph)
    long = parse_dsl(f'CLIPTextEncode(text="{"x" * 80}")\n', "x.cfy")
    assert str(long) == f'CLIPTextEncode(\n    text="{"x" * 80}",\n)\n'
    assert max(len(line) for line in str(long).splitlines()) <= 100


def test_empty_graph_prints_nothing() -> None:
    """An empty graph is an empty file."""
    assert str(Graph()) == ""
