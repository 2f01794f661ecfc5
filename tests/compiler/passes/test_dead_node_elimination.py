"""DeadNodeEliminationPass: DSL in, DSL out."""

from __future__ import annotations

from comfyc.compiler.passes.dead_node_elimination import DeadNodeEliminationPass

HEAD = """
ckpt = CheckpointLoaderSimple(ckpt_name="a.safetensors")
pos = CLIPTextEncode(text="seven", clip=ckpt.CLIP)
latent = EmptyLatentImage(width=64, height=64, batch_size=1)
s = KSampler(model=ckpt.MODEL, seed=1, steps=2, cfg=5.0, sampler_name="euler",
             scheduler="normal", positive=pos, negative=pos, latent_image=latent, denoise=1.0)
image = VAEDecode(samples=s, vae=ckpt.VAE)
"""


def test_unused_branches_are_removed(assert_pass) -> None:  # type: ignore[no-untyped-def]
    """A second checkpoint, an unconnected encode and an unused LoRA disappear."""
    assert_pass(DeadNodeEliminationPass(), before=HEAD + """
other = CheckpointLoaderSimple(ckpt_name="b.safetensors")
unused = CLIPTextEncode(text="never", clip=other.CLIP)
lora = LoraLoader(model=ckpt.MODEL, clip=ckpt.CLIP, lora_name="l.safetensors",
                  strength_model=1.0, strength_clip=1.0)
SaveImage(images=image, filename_prefix="x")
""", after=HEAD + """
SaveImage(images=image, filename_prefix="x")
""")


def test_declared_outputs_are_roots(assert_pass) -> None:  # type: ignore[no-untyped-def]
    """`output` keeps its producers alive even without an output node."""
    assert_pass(DeadNodeEliminationPass(), before=HEAD + "output image\n",
                after=HEAD + "output image\n", modified=False)


def test_unused_params_are_dropped(assert_pass) -> None:  # type: ignore[no-untyped-def]
    """A param whose only user was removed goes with it."""
    assert_pass(DeadNodeEliminationPass(), before="""
param prompt: STRING = "x"
""" + HEAD + """
unused = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)
SaveImage(images=image, filename_prefix="x")
""", after=HEAD + """
SaveImage(images=image, filename_prefix="x")
""")


def test_injectable_purity(assert_pass) -> None:  # type: ignore[no-untyped-def]
    """An is_impure predicate can keep nodes alive (as torch.fx allows)."""
    keep = DeadNodeEliminationPass(is_impure=lambda n: n.class_type in (
        "SaveImage", "EmptyImage"))
    assert_pass(keep, before=HEAD + """
e = EmptyImage(width=8, height=8, batch_size=1, color=0)
SaveImage(images=image, filename_prefix="x")
""", after=HEAD + """
e = EmptyImage(width=8, height=8, batch_size=1, color=0)
SaveImage(images=image, filename_prefix="x")
""", modified=False)
