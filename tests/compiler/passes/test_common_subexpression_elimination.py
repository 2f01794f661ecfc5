"""CommonSubexpressionEliminationPass: DSL in, DSL out."""

from __future__ import annotations

from comfyc.compiler.passes.common_subexpression_elimination import (
    CommonSubexpressionEliminationPass,
)


def test_two_loads_of_one_checkpoint_merge(assert_pass) -> None:  # type: ignore[no-untyped-def]
    """Identical loaders merge, and then their identical consumers merge too."""
    assert_pass(CommonSubexpressionEliminationPass(), before="""
a = CheckpointLoaderSimple(ckpt_name="m.safetensors")
b = CheckpointLoaderSimple(ckpt_name="m.safetensors")
pos = CLIPTextEncode(text="seven", clip=a.CLIP)
pos2 = CLIPTextEncode(text="seven", clip=b.CLIP)
c = ConditioningCombine(conditioning_1=pos, conditioning_2=pos2)
output c
""", after="""
a = CheckpointLoaderSimple(ckpt_name="m.safetensors")
pos = CLIPTextEncode(text="seven", clip=a.CLIP)
c = ConditioningCombine(conditioning_1=pos, conditioning_2=pos)
output c
""")


def test_output_nodes_and_different_inputs_stay(assert_pass) -> None:  # type: ignore[no-untyped-def]
    """SaveImage is never merged; nodes with different literals are kept."""
    text = """
e = EmptyImage(width=8, height=8, batch_size=1, color=0)
f = EmptyImage(width=8, height=8, batch_size=1, color=1)
SaveImage(images=e, filename_prefix="x")
SaveImage(images=e, filename_prefix="x")
SaveImage(images=f, filename_prefix="x")
"""
    assert_pass(CommonSubexpressionEliminationPass(), before=text, after=text, modified=False)


def test_params_are_compared_by_identity(assert_pass) -> None:  # type: ignore[no-untyped-def]
    """Two nodes reading the same param merge; a literal with the param's value does not."""
    assert_pass(CommonSubexpressionEliminationPass(), before="""
param w: INT = 64
a = EmptyLatentImage(width=w, height=64, batch_size=1)
b = EmptyLatentImage(width=w, height=64, batch_size=1)
c = EmptyLatentImage(width=64, height=64, batch_size=1)
x = LatentComposite(samples_to=a, samples_from=b, x=0, y=0, feather=0)
y = LatentComposite(samples_to=x, samples_from=c, x=0, y=0, feather=0)
output y
""", after="""
param w: INT = 64
a = EmptyLatentImage(width=w, height=64, batch_size=1)
c = EmptyLatentImage(width=64, height=64, batch_size=1)
x = LatentComposite(samples_to=a, samples_from=a, x=0, y=0, feather=0)
y = LatentComposite(samples_to=x, samples_from=c, x=0, y=0, feather=0)
output y
""")
