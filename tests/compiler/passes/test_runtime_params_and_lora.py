"""RuntimeParamsPass and LoraMergePass: DSL in, DSL out."""

from __future__ import annotations

import pytest

from comfyc.compiler.errors import WorkflowErrors
from comfyc.compiler.passes.base import PassContext, PassOptions
from comfyc.compiler.passes.lora_merge import LoraMergePass
from comfyc.compiler.passes.runtime_params import RuntimeParamsPass

from .conftest import run_pass

SAMPLER = """
ckpt = CheckpointLoaderSimple(ckpt_name="a.safetensors")
pos = CLIPTextEncode(text="seven", clip=ckpt.CLIP)
latent = EmptyLatentImage(width=64, height=64, batch_size=1)
s = KSampler(model=ckpt.MODEL, seed=42, steps=2, cfg=5.0, sampler_name="euler",
             scheduler="normal", positive=pos, negative=pos, latent_image=latent, denoise=1.0)
output s
"""


def test_sampler_seed_becomes_a_param(assert_pass) -> None:  # type: ignore[no-untyped-def]
    """Every literal sampler seed is a runtime param by default."""
    assert_pass(RuntimeParamsPass(), before=SAMPLER, after="""
param seed: INT = 42 [min=0, max=18446744073709551615]
""" + SAMPLER.replace("seed=42", "seed=seed"))


def test_named_inputs_become_params(assert_pass) -> None:  # type: ignore[no-untyped-def]
    """--param NODE.INPUT=NAME turns a literal into a param with that default."""
    graph, _ = run_pass(RuntimeParamsPass(PassContext(options=PassOptions(
        param_bindings=["2.text=prompt"], seed_params=False))), "@1 " + SAMPLER.strip()
        .replace("pos = ", "@2 pos = ", 1))
    assert graph.params["prompt"].default == "seven"
    assert graph.node("2").inputs["text"] is graph.params["prompt"]
    with pytest.raises(WorkflowErrors, match="there is no node #99"):
        run_pass(RuntimeParamsPass(PassContext(options=PassOptions(param_bindings=["99.text=p"]))),
                 SAMPLER)


def test_zero_strength_lora_is_removed(assert_pass) -> None:  # type: ignore[no-untyped-def]
    """A LoRA at strength 0 is an identity: consumers read its inputs."""
    assert_pass(LoraMergePass(), before="""
ckpt = CheckpointLoaderSimple(ckpt_name="a.safetensors")
lora = LoraLoader(model=ckpt.MODEL, clip=ckpt.CLIP, lora_name="l.safetensors",
                  strength_model=0.0, strength_clip=0.0)
pos = CLIPTextEncode(text="seven", clip=lora.CLIP)
output pos
""", after="""
ckpt = CheckpointLoaderSimple(ckpt_name="a.safetensors")
pos = CLIPTextEncode(text="seven", clip=ckpt.CLIP)
output pos
""")


def test_lora_modes() -> None:
    """Constant strengths merge; a param strength (or --lora-runtime) keeps factors."""
    text = """
param s: FLOAT = 0.5
ckpt = CheckpointLoaderSimple(ckpt_name="a.safetensors")
@5 a = LoraLoader(model=ckpt.MODEL, clip=ckpt.CLIP, lora_name="l.safetensors",
                  strength_model=1.0, strength_clip=1.0)
@6 b = LoraLoaderModelOnly(model=a.MODEL, lora_name="l.safetensors", strength_model=s)
output b
"""
    graph, result = run_pass(LoraMergePass(), text)
    assert result.modified
    assert graph.node("5").facts.lora_mode == "merged"
    assert graph.node("6").facts.lora_mode == "runtime"
    graph, _ = run_pass(LoraMergePass(PassContext(options=PassOptions(lora_runtime=True))), text)
    assert graph.node("5").facts.lora_mode == "runtime"
