"""Every DSL error kind: exact line, column and message, in the one rendered format."""

from __future__ import annotations

import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.errors import WorkflowError, WorkflowErrors
from comfyc.compiler.passes.validate import validate_graph
from comfyc.frontends.comfy_json.api import graph_to_api
from comfyc.frontends.dsl import parse_dsl

CKPT = 'ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")\n'


def _errors(text: str) -> list[WorkflowError]:
    with pytest.raises(WorkflowErrors) as info:
        parse_dsl(text, "x.cfy")
    return info.value.errors


def _one(text: str) -> WorkflowError:
    errors = _errors(text)
    assert len(errors) == 1, [e.render() for e in errors]
    return errors[0]


# (case id, source, line, col, message, help or None, a note that must appear or None)
CASES = [
    ("unknown_node", 'x = KSamplr(seed=1)\n', 1, 5,
     "unknown node type 'KSamplr'", "did you mean 'KSampler'?", None),
    ("unknown_input", CKPT + 'pos = CLIPTextEncode(txt="a", clip=ckpt.CLIP)\n', 2, 22,
     "unknown input 'txt' for CLIPTextEncode", "did you mean 'text'?", None),
    ("positional", CKPT + 'pos = CLIPTextEncode("a seven", clip=ckpt.CLIP)\n', 2, 22,
     "positional argument not allowed: inputs are passed by name", 'write text="a seven"', None),
    ("unpack_count", 'model, clip = CheckpointLoaderSimple(ckpt_name="m")\n', 1, 1,
     "CheckpointLoaderSimple has 3 outputs (MODEL, CLIP, VAE) but 2 names are bound",
     "write `model, clip, _ = ...` to ignore an output", None),
    ("type_mismatch", CKPT + 'latent = EmptyLatentImage(width=64, height=64, batch_size=1)\n'
     'image = VAEDecode(samples=latent, vae=ckpt.VAE)\n'
     'again = VAEDecode(samples=image, vae=ckpt.VAE)\n', 4, 27,
     "input 'samples' of VAEDecode expects LATENT, got IMAGE", None,
     "'image' is bound at x.cfy:3:1 to output 0 (IMAGE: IMAGE) of VAEDecode"),
    ("undefined_name", CKPT + 'pos = CLIPTextEncode(text="a", clip=clp)\n', 2, 37,
     "undefined name 'clp'", None, None),
    ("used_before_bound", 'pos = CLIPTextEncode(text="a", clip=clip)\n'
     'model, clip, vae = CheckpointLoaderSimple(ckpt_name="m")\n', 1, 37,
     "undefined name 'clip'", None,
     "'clip' is bound later, at x.cfy:2:8; a name must be bound before it is used"),
    ("rebind_param", 'param seed: INT = 1\n'
     'seed = EmptyLatentImage(width=64, height=64, batch_size=1)\n', 2, 1,
     "cannot rebind param 'seed'", None, "'seed' is declared as a param at x.cfy:1:7"),
    ("shadow_param", 'latent = EmptyLatentImage(width=64, height=64, batch_size=1)\n'
     'param latent: INT = 1\n', 2, 7,
     "param 'latent' would shadow the name bound at 1:1", None, None),
    ("bad_escape", 'pos = CLIPTextEncode(text="a \\(b\\)", clip=clip)\n', 1, 30,
     'invalid escape \'\\(\' in "..." string (JSON escapes only: \\" \\\\ \\/ \\b \\f \\n \\r '
     '\\t \\uXXXX)', "write '\\\\(' for a literal backslash, or use a \"\"\"raw string\"\"\" "
     "(no escapes)", None),
    ("unterminated_string", 'pos = CLIPTextEncode(text="abc, clip=clip)\n', 1, 27,
     'unterminated string; "..." cannot span lines (use """...""" for multi-line prompts)',
     None, None),
    ("unterminated_raw_string", 'pos = CLIPTextEncode(text="""abc\n', 1, 27,
     'unterminated """raw string""": no closing """ before the end of the file', None, None),
    ("missing_paren", 'x = EmptyLatentImage(width=64, height=64\n'
     'y = EmptyLatentImage(width=64, height=64, batch_size=1)\n', 1, 41,
     "missing ')': the call opened at 1:21 is not closed", "add ')' after the last argument",
     "the next token is name 'y' at 2:1"),
    ("missing_paren_multiline", 'x = KSampler(\n    seed=1,\n    steps=20\n\n'
     'image = VAEDecode(samples=x, vae=v)\n', 3, 13,
     "missing ')': the call opened at 1:13 is not closed", None, None),
    ("missing_paren_at_eof", 'x = EmptyLatentImage(width=64,\n    height=64', 2, 14,
     "missing ')': the call opened at 1:21 is not closed", None, "the file ends here"),
    ("missing_bracket", CKPT + 'x = CLIPTextEncode(text=["a", "b", clip=ckpt.CLIP)\n', 2, 40,
     "expected ',' or ']', found '='", None, "the list opened at 2:25 is not closed yet"),
    ("link_in_list", CKPT + 'x = CLIPTextEncode(text=["a", ckpt.CLIP], clip=ckpt.CLIP)\n', 2, 31,
     "a link cannot appear inside a list literal", None, None),
    ("link_in_object", CKPT + 'x = CLIPTextEncode(text={"k": ckpt.CLIP}, clip=ckpt.CLIP)\n',
     2, 31, "a link cannot appear inside an object literal", None, None),
    ("missing_comma", 'x = EmptyLatentImage(width=64 height=64)\n', 1, 31,
     "expected ',' or ')', found name 'height'", "separate arguments and items with ','", None),
    ("literal_binding", 'x = 5\n', 1, 5, "expected a node call after '=', found number 5",
     None, None),
    ("keyword_binding", 'output = VAEDecode(samples=s, vae=v)\n', 1, 1,
     "'output' is a keyword at the start of a statement and cannot be a binding name",
     "pick another name, e.g. output_image", None),
    ("whole_handle", CKPT + 'x = CLIPTextEncode(text="a", clip=ckpt)\n', 2, 35,
     "'ckpt' is a CheckpointLoaderSimple node with 3 outputs (MODEL, CLIP, VAE); an input "
     "takes one of them", "select one: ckpt.MODEL, ckpt.CLIP, ckpt.VAE", None),
    ("unknown_output", CKPT + 'x = CLIPTextEncode(text="a", clip=ckpt.CLIPS)\n', 2, 40,
     "CheckpointLoaderSimple has no output 'CLIPS'; its outputs are MODEL, CLIP, VAE",
     "did you mean 'CLIP'?", None),
    ("output_index", CKPT + 'x = CLIPTextEncode(text="a", clip=ckpt[3])\n', 2, 40,
     "output index 3 is out of range: CheckpointLoaderSimple has 3 outputs (0..2: MODEL, CLIP, "
     "VAE)", None, None),
    ("nested_call", 'x = VAEDecode(samples=EmptyLatentImage(width=64), vae=v)\n', 1, 23,
     "nested node calls are not allowed: one statement is one node",
     "bind it first: `x = EmptyLatentImage(...)`, then pass x", None),
    ("param_into_link", 'param seed: INT = 1\nx = VAEDecode(samples=seed, vae=seed)\n', 2, 23,
     "param 'seed' (INT) cannot feed input 'samples' of VAEDecode, which takes a LATENT link",
     None, None),
    ("param_type", 'param steps: int = 4\n', 1, 14, "unknown param type 'int'", None, None),
    ("param_default_type", 'param steps: INT = "4"\n', 1, 20,
     "param 'steps' is INT, but its default \"4\" is a STRING", None, None),
    ("duplicate_id", '@3 x = EmptyLatentImage(width=64)\n@3 y = EmptyLatentImage(width=64)\n',
     2, 1, "node id 3 is already used", None, None),
    ("duplicate_input", 'x = EmptyLatentImage(width=64, width=32)\n', 1, 32,
     "input 'width' is given twice", None, None),
    ("unknown_decorator", '@titel("x") y = EmptyLatentImage(width=64)\n', 1, 2,
     "unknown decorator '@titel'", None, None),
    ("no_outputs_bound", 'x = PreviewImage(images=i)\n', 1, 1,
     "PreviewImage has no outputs, so nothing can be bound to 'x'", "remove `x =`", None),
    ("single_quotes", "x = CLIPTextEncode(text='a')\n", 1, 25,
     'unexpected character "\'"; expected a value or a name', 'strings use double quotes: "..."',
     None),
    ("number_out_of_range", 'x = EmptyLatentImage(width=1e999)\n', 1, 28,
     "number 1e999 is out of range for a 64-bit float", None, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_error_position_and_message(case: tuple) -> None:
    """The first error is at the exact line and column with the exact message."""
    _, text, line, col, message, help_text, note = case
    error = _errors(text)[0]
    assert (error.loc.file, error.loc.line, error.loc.col) == ("x.cfy", line, col), error.render()
    assert error.message == message
    if help_text is not None:
        assert error.help == help_text
    if note is not None:
        assert any(note in n for n in error.notes), error.notes


def test_rendered_format_has_caret_span_and_notes() -> None:
    """Errors render as FILE:LINE:COL: error: MESSAGE, the line, a caret span, note/help."""
    text = 'param seed: INT = 1\nseed = EmptyLatentImage(width=64, height=64, batch_size=1)\n'
    rendered = _one(text).render({"x.cfy": text})
    assert rendered.splitlines() == [
        "x.cfy:2:1: error: cannot rebind param 'seed'",
        " 2 | seed = EmptyLatentImage(width=64, height=64, batch_size=1)",
        "   | ^^^^",
        "note: 'seed' is declared as a param at x.cfy:1:7",
        "help: params can be neither rebound nor shadowed; pick another name for this output",
    ]


def test_missing_paren_renders_on_the_unclosed_line() -> None:
    """The caret of a missing ')' sits right after the last argument, not on the next line."""
    text = 'x = EmptyLatentImage(width=64, height=64\ny = EmptyLatentImage(width=64)\n'
    lines = _one(text).render({"x.cfy": text}).splitlines()
    assert lines[1] == " 1 | x = EmptyLatentImage(width=64, height=64"
    assert lines[2] == "   |                                         ^"


def test_several_problems_are_reported_at_once() -> None:
    """Name and catalogue errors are collected, in source order."""
    text = CKPT + 'a = CLIPTextEncode(txt="a", clip=ckpt.CLIP)\nb = KSamplr(x=1)\nc = Foo(y=zz)\n'
    errors = _errors(text)
    # Foo is unknown, and its argument still gets its name checked.
    assert [(e.loc.line, e.loc.col) for e in errors] == [(2, 20), (3, 5), (4, 5), (4, 11)]


def test_bad_escapes_are_all_reported() -> None:
    """Token errors do not stop at the first one."""
    errors = _errors('a = CLIPTextEncode(text="\\(", clip=c)\nb = CLIPTextEncode(text="\\q")\n')
    assert [(e.loc.line, e.loc.col) for e in errors] == [(1, 26), (2, 26)]


def test_validator_errors_point_into_the_dsl() -> None:
    """The foundation's validator reports range and missing-input errors at DSL spans."""
    text = 'latent = EmptyLatentImage(width=64, height=64, batch_size=0)\nPreviewImage()\n'
    graph = parse_dsl(text, "x.cfy")
    with pytest.raises(WorkflowErrors) as info:
        validate_graph(graph, default_catalog(), all_nodes=True)
    found = {(e.kind, e.loc.line, e.loc.col) for e in info.value.errors}
    assert ("value_smaller_than_min", 1, 59) in found
    assert ("required_input_missing", 2, 1) in found


def test_param_without_default_cannot_be_exported() -> None:
    """graph_to_api names the param, at its declaration."""
    text = ('param prompt: STRING\nckpt = CheckpointLoaderSimple(ckpt_name="m")\n'
            'pos = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)\n')
    graph = parse_dsl(text, "x.cfy")
    with pytest.raises(WorkflowError) as info:
        graph_to_api(graph)
    error = info.value
    assert (error.loc.line, error.loc.col, error.loc.end_col) == (1, 7, 13)
    assert error.message == ("param 'prompt' has no default, so it has no value in ComfyUI's "
                             "API format")
    assert error.render({"x.cfy": text}).splitlines()[:3] == [
        "x.cfy:1:7: error: param 'prompt' has no default, so it has no value in "
        "ComfyUI's API format",
        " 1 | param prompt: STRING",
        "   |       ^^^^^^",
    ]
    assert graph_to_api(graph, params={"prompt": "a seven"})["2"]["inputs"]["text"] == "a seven"
