"""ConstantFoldingPass: DSL in / DSL out, and the folded program computes the same image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
from comfyc.compiler.passes.base import PassContext
from comfyc.compiler.passes.constant_folding import ConstantFoldingPass

from .conftest import canonical, parse, run_pass

BODY = """
ckpt = CheckpointLoaderSimple(ckpt_name="random-sd1.safetensors")
pos = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)
neg = CLIPTextEncode(text="", clip=ckpt.CLIP)
both = ConditioningCombine(conditioning_1=neg, conditioning_2=neg)
latent = EmptyLatentImage(width=64, height=64, batch_size=1)
s = KSampler(model=ckpt.MODEL, seed=3, steps=3, cfg=4.0, sampler_name="euler",
             scheduler="normal", positive=pos, negative=both, latent_image=latent, denoise=1.0)
image = VAEDecode(samples=s, vae=ckpt.VAE)
output image
"""


def _context(models: Path) -> PassContext:
    return PassContext(models=TorchModelCache(str(models)))


def test_constant_prompts_fold_params_do_not(random_models: Path) -> None:
    """A constant prompt becomes a stored tensor; a param prompt stays an encode."""
    text = 'param prompt: STRING = "seven"\n' + BODY
    step = ConstantFoldingPass(_context(random_models))
    graph, result = run_pass(step, text)
    assert result.modified
    printed = str(graph)
    assert 'pos = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)' in printed
    # Conditioning ops on constants fold too; the folded `neg` only they needed goes away.
    assert 'both = FoldedConditioning(key="cond.4")' in printed and "neg = " not in printed
    fates = [(c.action, c.node_id, c.into) for c in step.context.changes]
    assert ("folded", "3", "cond.3") in fates and ("folded_away", "3", "4") in fates
    assert graph.node("6").facts.sigmas == "sigmas.6"
    entry = graph.constants["cond.4"]
    assert len(entry) == 2 and entry[0]["cond"].shape == (1, 77, 32)


def test_folded_program_gives_the_same_image(random_models: Path) -> None:
    """Folding changes where work happens, not the result."""
    text = 'param prompt: STRING = "seven"\n' + BODY.replace("text=prompt", 'text="seven"')
    cache = TorchModelCache(str(random_models))
    plain = parse(text)
    folded, _ = run_pass(ConstantFoldingPass(PassContext(models=cache)), text)
    assert "CLIPTextEncode" not in str(folded)
    a = lower_to_program(plain, cache=cache).run({}, save=False).images
    b = lower_to_program(folded, cache=cache).run({}, save=False).images
    (image_a,), (image_b,) = a.values(), b.values()
    np.testing.assert_allclose(image_a, image_b, atol=1e-6)


def test_canonical_text_of_a_folded_node_parses_back() -> None:
    """The printed folded node is valid DSL (inspect output can be read back)."""
    assert canonical('x = FoldedConditioning(key="cond.1")\noutput x\n').startswith("x = ")
