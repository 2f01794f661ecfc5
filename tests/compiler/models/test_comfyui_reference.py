"""comfyc's SDXL loading against ComfyUI's own code, when a ComfyUI source tree is at hand.

Set ``COMFYUI_SRC`` to a ComfyUI checkout (its Python dependencies importable, e.g. ``einops``
and ``psutil``; torchvision and other media packages are stubbed) to run it. The check runs in a
subprocess, because importing ComfyUI parses arguments and registers stubs. It compares, on the
tiny synthetic SDXL base and refiner files (with jittered norms and biases):

* ComfyUI's ``model_detection`` on the full-size files: SD15, SDXL, SDXLRefiner classes;
* ComfyUI's ``UNetModel`` (loaded from our file, no missing or unexpected keys) on ComfyUI's
  ``encode_adm`` vector against `sdxl_unet_forward` on `adm_vector`;
* ComfyUI's bigG ``CLIPTextModel`` (its own key conversion) penultimate hidden state without the
  final norm, and its projected pooled output, against `text_conditioning`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_SOURCE = os.environ.get("COMFYUI_SRC")

pytestmark = pytest.mark.skipif(
    not _SOURCE or not (Path(_SOURCE) / "comfy" / "model_detection.py").is_file(),
    reason="set COMFYUI_SRC to a ComfyUI source tree to compare against ComfyUI's own code",
)

_SCRIPT = r'''
import json, sys, types
sys.argv = ["comfyui", "--cpu"]
import torch
torch.set_num_threads(1)
# Import what comfyc needs before the stubs below (transformers probes for torchvision).
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, PreTrainedModel
from diffusers import AutoencoderKL, UNet2DConditionModel
import diffusers.loaders.peft
from comfyc.compiler.models.sdxl import adm_vector, sdxl_unet_forward, text_conditioning
from comfyc.compiler.models.single_file import load_checkpoint, read_state_dict
from comfyc.compiler.models.synthetic import (build_modules, model_spec, single_file_layout,
                                              write_checkpoint)
for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
             "torchaudio", "av", "spandrel", "kornia", "scipy"):
    try:
        __import__(name)
    except ImportError:
        module = types.ModuleType(name)
        module.__path__ = []
        sys.modules[name] = module
if not hasattr(sys.modules["torchvision"], "transforms"):
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.clip_model, comfy.model_detection, comfy.ops, comfy.utils
from comfy.ldm.modules.diffusionmodules import openaimodel
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

out = {"detected": {}, "models": {}}
for family in ("sd15", "sdxl", "sdxl_refiner", "sdxl_turbo"):
    spec = model_spec(family, "full")
    groups = single_file_layout(build_modules(spec), spec, 0)
    state = {n: torch.empty(s, device="meta") for g in groups for n, s in g.shapes.items()}
    config = comfy.model_detection.model_config_from_unet(state, "model.diffusion_model.")
    out["detected"][family] = [type(config).__name__, config.latent_format.scale_factor]
folder = __import__("tempfile").mkdtemp()
ops = comfy.ops.disable_weight_init
for family in ("sdxl", "sdxl_refiner"):
    path = write_checkpoint(f"{folder}/{family}.safetensors", family, "tiny", seed=5,
                            dtype=torch.float32, jitter=0.05)
    state, _ = read_state_dict(path)
    ours = load_checkpoint(path)
    config = dict(comfy.model_detection.detect_unet_config(state, "model.diffusion_model."))
    config.update(num_head_channels=64, num_heads=-1, dtype=torch.float32, device="cpu",
                  operations=ops)
    config.pop("use_temporal_resblock", None)
    config.pop("use_temporal_attention", None)
    unet = openaimodel.UNetModel(**config)
    prefix = "model.diffusion_model."
    missing, unexpected = unet.load_state_dict(
        {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=False)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, ours.unet.config.cross_attention_dim, generator=generator)
    pooled = torch.randn(2, 128, generator=generator)
    values = (64, 96, 0, 8, 64, 96) if family == "sdxl" else (64, 96, 0, 8, 2.5)
    ids = dict(zip(ours.adm_ids, values))
    parts = [timestep_embedding(torch.Tensor([float(v)]), 256) for v in ids.values()]
    y_comfy = torch.cat((pooled, torch.flatten(torch.cat(parts)).unsqueeze(0).repeat(2, 1)), 1)
    y = adm_vector(pooled, family, **ids)
    t = torch.tensor([999.0, 10.0])
    with torch.no_grad():
        want = unet(x, t, context=context, y=y_comfy)
        got = sdxl_unet_forward(ours.unet, x, t, context, y)
    g_config = json.load(open(comfy.clip_model.__file__.replace("clip_model.py",
                                                                 "clip_config_bigg.json")))
    g_module = ours.text_encoder_2.config
    g_config.update(hidden_size=g_module.hidden_size, intermediate_size=g_module.intermediate_size,
                    num_hidden_layers=g_module.num_hidden_layers,
                    num_attention_heads=g_module.num_attention_heads,
                    projection_dim=g_module.projection_dim)
    clip = comfy.clip_model.CLIPTextModel(g_config, torch.float32, "cpu", ops)
    g_prefix = f"conditioner.embedders.{1 if family == 'sdxl' else 0}.model."
    g_state = {"clip_g." + k[len(g_prefix):]: v for k, v in state.items() if k.startswith(g_prefix)}
    g_state = comfy.utils.clip_text_transformers_convert(g_state, "clip_g.", "clip_g.transformer.")
    g_missing, g_unexpected = clip.load_state_dict(
        {k[len("clip_g.transformer."):]: v for k, v in g_state.items()
         if k.startswith("clip_g.transformer.")}, strict=False)
    tokens = torch.zeros(1, 77, dtype=torch.long)
    tokens[0, :4] = torch.tensor([49406, 320, 2368, 49407])
    with torch.no_grad():
        _, hidden, projected, _ = clip(tokens, intermediate_output=-2,
                                       final_layer_norm_intermediate=False)
        ours_context, ours_pooled = text_conditioning(
            ours, {"clip_l": torch.full((1, 77), 49407), "clip_g": tokens})
    width_l = 0 if ours.text_encoder is None else ours.text_encoder.config.hidden_size
    out["models"][family] = {
        "unet_missing": list(missing), "unet_unexpected": list(unexpected),
        "clip_missing": list(g_missing), "clip_unexpected": list(g_unexpected),
        "y_equal": bool(torch.equal(y, y_comfy)),
        "unet_diff": float((want - got).abs().max()), "unet_std": float(want.std()),
        "hidden_diff": float((ours_context[..., width_l:] - hidden).abs().max()),
        "pooled_diff": float((ours_pooled - projected).abs().max()),
    }
print("RESULT " + json.dumps(out))
'''


def test_sdxl_matches_comfyui_code(tmp_path: Path) -> None:
    """Detection, UNet on y, and bigG encodings agree with ComfyUI's implementation."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SOURCE, env.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                            cwd=_SOURCE, env=env, timeout=900, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["detected"] == {"sd15": ["SD15", 0.18215], "sdxl": ["SDXL", 0.13025],
                               "sdxl_refiner": ["SDXLRefiner", 0.13025],
                               "sdxl_turbo": ["SDXL", 0.13025]}
    for family, facts in out["models"].items():
        assert facts["unet_missing"] == facts["unet_unexpected"] == [], family
        assert facts["clip_missing"] == facts["clip_unexpected"] == [], family
        assert facts["y_equal"], family
        # NOTE: the same float32 maths in other kernels (attention, GroupNorm): ~1e-6.
        assert facts["unet_diff"] < 1e-4 * max(facts["unet_std"], 1.0), family
        assert facts["hidden_diff"] < 1e-4 and facts["pooled_diff"] < 1e-4, family
