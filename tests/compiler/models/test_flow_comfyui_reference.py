"""comfyc's SD3/Flux loading against ComfyUI's own code, when a ComfyUI source tree is at hand.

Set ``COMFYUI_SRC`` to a ComfyUI checkout and ``COMFYUI_PYTHON`` to a Python that has ComfyUI's
dependencies (default: this one); media packages (torchvision, av, ...) are stubbed. ComfyUI runs
in a subprocess (importing it parses arguments and registers stubs) on files and inputs written
here, and returns its outputs in a safetensors file. Checked:

* ``model_detection`` on the published SD3 medium, SD3.5 medium/large and Flux dev/schnell
  shape tables and on the tiny files: ComfyUI's class (SD3, Flux, FluxSchnell), latent format
  scale/shift and sampling settings equal comfyc's facts;
* ComfyUI's MMDiT and Flux modules, loaded from comfyc's tiny files (no missing or unexpected
  keys), called with ComfyUI's signature, against `DiffusionModel.comfy_module`; and with
  UNETLoader's ``fp8_e4m3fn`` storage (weights created in fp8, computed in float32);
* ComfyUI's SD3 and Flux text-encoder stacks (``SD3ClipModel``, ``FluxClipModel`` with tiny
  configs, ComfyUI's own tokenizers and token weighting) against `sd3_text_conditioning` /
  `flux_text_conditioning` on ComfyUI's token lists. ComfyUI's SD3 combination hard-codes the
  real widths (768, 1280, 4096); for the tiny widths the subprocess substitutes them in that one
  function's source.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

_SOURCE = os.environ.get("COMFYUI_SRC")

pytestmark = pytest.mark.skipif(
    not _SOURCE or not (Path(_SOURCE) / "comfy" / "model_detection.py").is_file(),
    reason="set COMFYUI_SRC to a ComfyUI source tree to compare against ComfyUI's own code",
)

_PROMPTS = ["a (red:1.3) cat, golden hour", "",
            "a very long prompt " + " ".join(f"token{i}" for i in range(90))]

_SCRIPT = r'''
import importlib.abc, importlib.machinery, inspect, json, sys, textwrap, types
sys.argv = ["comfyui", "--cpu"]
import torch
torch.set_num_threads(1)


class _Stub(types.ModuleType):
    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return type(item, (), {"__init__": lambda self, *a, **k: None})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    roots = ("torchvision", "torchaudio", "av", "spandrel", "kornia")

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Stub(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())
import comfy.options
comfy.options.enable_args_parsing()
import comfy.model_detection, comfy.utils
from comfy.text_encoders import flux as flux_te, sd3_clip
from safetensors.torch import load_file, save_file

job = json.loads(sys.stdin.read())
out = {"detected": {}, "models": {}, "clip": {}}
tensors = {}
for name, table in job["tables"].items():
    state = {k: torch.empty(v, device="meta") for k, v in table.items()}
    config = comfy.model_detection.model_config_from_unet(state, "")
    out["detected"][name] = [type(config).__name__, config.latent_format.scale_factor,
                             config.latent_format.shift_factor, dict(config.sampling_settings)]
inputs = load_file(job["inputs"])
for name, path in job["files"].items():
    sd = load_file(path)
    config = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    facts = out["models"].setdefault(name, {})
    facts["class"] = type(config).__name__
    for weight_dtype in job["weight_dtypes"].get(name, ["default"]):
        if weight_dtype == "default":
            config.set_inference_dtype(torch.float32, None)
        else:
            config.set_inference_dtype(getattr(torch, weight_dtype), torch.float32)
        model = config.get_model(sd, "model.diffusion_model.")
        prefix = "model.diffusion_model."
        weights = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        weights = config.process_unet_state_dict(weights)
        missing, unexpected = model.diffusion_model.load_state_dict(weights, strict=False)
        facts[weight_dtype] = {"missing": list(missing), "unexpected": list(unexpected)}
        sampling = model.model_sampling
        facts["sampling"] = [type(sampling).__name__, float(getattr(sampling, "shift", 0)),
                             float(getattr(sampling, "multiplier", 1.0))]
        x, t = inputs[f"{name}.x"], inputs[f"{name}.t"]
        context, y = inputs[f"{name}.context"], inputs[f"{name}.y"]
        with torch.no_grad():
            if f"{name}.guidance" in inputs:
                result = model.diffusion_model(x, t, context, y=y,
                                               guidance=inputs[f"{name}.guidance"])
            else:
                result = model.diffusion_model(x, t, context=context, y=y)
        tensors[f"{name}.{weight_dtype}"] = result.float().contiguous()


def patched_sd3_encode(widths):
    """SD3ClipModel.encode_token_weights with ComfyUI's literal widths replaced."""
    source = textwrap.dedent(inspect.getsource(sd3_clip.SD3ClipModel.encode_token_weights))
    source = (source.replace("4096", str(widths["context"]))
              .replace("(768, 0)", f"({widths['l']}, 0)")
              .replace("(1, 768)", f"(1, {widths['l']})")
              .replace("(1, 1280)", f"(1, {widths['g']})")
              .replace("768 + 1280", f"{widths['l']} + {widths['g']}"))
    scope = dict(vars(sd3_clip))
    exec(source, scope)
    return scope["encode_token_weights"]


for name, spec in job["clip"].items():
    options = {f"{k}_model_config": v for k, v in spec["configs"].items()}
    if name == "sd3":
        clip = sd3_clip.SD3ClipModel(device="cpu", dtype=torch.float32, model_options=options)
        clip.encode_token_weights = types.MethodType(patched_sd3_encode(spec["widths"]), clip)
        tokenizer = sd3_clip.SD3Tokenizer()
        parts = {"clip_l": clip.clip_l, "clip_g": clip.clip_g, "t5xxl": clip.t5xxl}
    else:
        clip = flux_te.FluxClipModel(device="cpu", dtype=torch.float32, model_options=options)
        tokenizer = flux_te.FluxTokenizer()
        parts = {"clip_l": clip.clip_l, "t5xxl": clip.t5xxl}
    loads = {}
    for part, path in spec["files"].items():
        missing, unexpected = parts[part].load_sd(load_file(path))
        loads[part] = [k for k in missing if "position_ids" not in k], list(unexpected)
    records = []
    for index, prompt in enumerate(job["prompts"]):
        tokens = tokenizer.tokenize_with_weights(prompt)
        with torch.no_grad():
            cond, pooled = clip.encode_token_weights(tokens)[:2]
        tensors[f"clip.{name}.{index}.cond"] = cond.float().contiguous()
        tensors[f"clip.{name}.{index}.pooled"] = pooled.float().contiguous()
        records.append({k: [[[int(t), float(w)] for t, w in chunk] for chunk in v]
                        for k, v in tokens.items()})
    out["clip"][name] = {"loads": loads, "tokens": records}
save_file(tensors, job["outputs"])
print("RESULT " + json.dumps(out))
'''


def _tables() -> dict[str, dict[str, list[int]]]:
    """Published full-size original-layout shape tables (from test_dit_configs' configs)."""
    from test_dit_configs import FLUX_DEV, FLUX_SCHNELL, SD3_MEDIUM, SD35_LARGE, SD35_MEDIUM

    from comfyc.compiler.models.dit_keymap import flux_key_plans, sd3_key_plans
    from comfyc.compiler.models.flow import build_transformer

    out = {}
    for name, config, kind in (("sd3_medium", SD3_MEDIUM, "sd3"),
                               ("sd35_medium", SD35_MEDIUM, "sd3"),
                               ("sd35_large", SD35_LARGE, "sd3"),
                               ("flux_dev", FLUX_DEV, "flux"),
                               ("flux_schnell", FLUX_SCHNELL, "flux")):
        shapes = {k: list(v.shape) for k, v in build_transformer(config, kind).state_dict().items()}
        plans = (sd3_key_plans if kind == "sd3" else flux_key_plans)(shapes)
        out[name] = {p.original: [sum(shapes[x][0] for x in p.parts), *shapes[p.parts[0]][1:]]
                     for p in plans}
    return out


def _clip_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "max_position_embeddings",
                                   "hidden_act", "vocab_size")}


def _t5_config(config: dict[str, Any]) -> dict[str, Any]:
    return {"d_model": config["d_model"], "d_kv": config["d_kv"], "d_ff": config["d_ff"],
            "num_heads": config["num_heads"], "num_layers": config["num_layers"],
            "vocab_size": config["vocab_size"]}


def test_flow_models_match_comfyui_code(flow_files: dict[str, Path],
                                        flow_split: dict[str, dict[str, Path]],
                                        tmp_path: Path) -> None:
    """Detection facts, transformer outputs and prompt encodings agree with ComfyUI's code."""
    from safetensors.torch import load_file, save_file

    from comfyc.compiler.models.flow import FLOW_FAMILIES, load_flow_checkpoint
    from comfyc.compiler.models.flow_conditioning import (
        flux_text_conditioning,
        sd3_text_conditioning,
    )
    from comfyc.compiler.models.synthetic import model_spec

    sys.path.insert(0, str(Path(__file__).parent))
    generator = torch.Generator().manual_seed(3)
    inputs: dict[str, torch.Tensor] = {}
    loaded = {}
    for name, path in flow_files.items():
        checkpoint = load_flow_checkpoint(path)
        loaded[name] = checkpoint
        model = checkpoint.model
        inputs[f"{name}.x"] = torch.randn(2, 16, 8, 10, generator=generator)
        sigma = torch.tensor([0.8, 0.3])
        inputs[f"{name}.t"] = sigma * 1000 if model.detected.kind == "sd3" else sigma
        inputs[f"{name}.context"] = torch.randn(2, 60, model.context_dim, generator=generator)
        inputs[f"{name}.y"] = torch.randn(2, model.pooled_dim, generator=generator)
        if model.guidance_embed:
            inputs[f"{name}.guidance"] = torch.tensor([3.5, 2.0])
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    clip_jobs = {}
    for name, clip_type in (("sd3", "sd3"), ("flux_dev", "flux")):
        spec = model_spec(name, "tiny")
        files = {k: str(v) for k, v in flow_split[name].items()
                 if k in ("clip_l", "clip_g", "t5xxl")}
        configs = {"clip_l": _clip_config(spec.components["text_encoder"])}
        if clip_type == "sd3":
            configs["clip_g"] = _clip_config(spec.components["text_encoder_2"])
            configs["t5xxl"] = _t5_config(spec.components["text_encoder_3"])
        else:
            configs["t5xxl"] = _t5_config(spec.components["text_encoder_2"])
        clip_jobs[clip_type] = {"files": files, "configs": configs, "widths": {
            "l": configs["clip_l"]["hidden_size"],
            "g": configs.get("clip_g", {}).get("hidden_size", 1280),
            "context": configs["t5xxl"]["d_model"]}}
    job = {"tables": _tables(), "files": {k: str(v) for k, v in flow_files.items()},
           "inputs": str(tmp_path / "inputs.safetensors"),
           "outputs": str(tmp_path / "outputs.safetensors"),
           "weight_dtypes": {"flux_dev": ["default", "float8_e4m3fn"],
                             "sd35_medium": ["default", "float8_e4m3fn"]},
           "clip": clip_jobs, "prompts": _PROMPTS}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=_SOURCE)
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    result = subprocess.run([python, "-c", _SCRIPT], input=json.dumps(job), capture_output=True,
                            text=True, cwd=_SOURCE, env=env, timeout=1800, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT "):])
    outputs = load_file(str(tmp_path / "outputs.safetensors"))

    classes = {"SD3": "sd3", "Flux": "flux", "FluxSchnell": "flux_schnell"}
    for name, (cls, scale, shift, settings) in out["detected"].items():
        family = classes[cls]
        assert family == ("sd3" if name.startswith("sd3") else name.replace("_dev", ""))
        from comfyc.compiler.models.flow import SAMPLING_SETTINGS, latent_format_for

        latent = latent_format_for(family)
        assert (scale, shift) == (latent.scale, latent.shift), name
        assert settings == SAMPLING_SETTINGS[family], name
    for name, facts in out["models"].items():
        model = loaded[name].model
        assert classes[facts["class"]] == model.family and model.family in FLOW_FAMILIES
        sampling = model.model_sampling()
        assert facts["sampling"][1] == pytest.approx(sampling.shift), name
        for weight_dtype, load in facts.items():
            if weight_dtype in ("class", "sampling"):
                continue
            assert load == {"missing": [], "unexpected": []}, (name, weight_dtype)
            if weight_dtype == "default":
                module = model.comfy_module
            else:
                from comfyc.compiler.models.flow import load_diffusion_model

                module = load_diffusion_model(flow_files[name],
                                              weight_dtype="fp8_e4m3fn").comfy_module
            args = [inputs[f"{name}.{k}"] for k in ("x", "t", "context", "y")]
            if f"{name}.guidance" in inputs:
                args.append(inputs[f"{name}.guidance"])
            with torch.no_grad():
                ours = module(*args)
            theirs = outputs[f"{name}.{weight_dtype}"]
            # NOTE: the same float32 maths through other kernels (attention, norms): ~1e-6.
            scale = max(float(theirs.std()), 1.0)
            assert float((ours - theirs).abs().max()) < 1e-4 * scale, (name, weight_dtype)

    for clip_type, data in out["clip"].items():
        # NOTE: Flux's CLIP-L has no projection (its pooled output is used unprojected).
        assert all(set(m) <= {"text_projection.weight"} and u == []
                   for m, u in data["loads"].values()), data["loads"]
        name = "sd3" if clip_type == "sd3" else "flux_dev"
        encoders = loaded[name].text_encoders
        for index, tokens in enumerate(data["tokens"]):
            if clip_type == "sd3":
                cond, pooled = sd3_text_conditioning(encoders, tokens)
            else:
                cond, pooled = flux_text_conditioning(encoders, tokens)
            want = outputs[f"clip.{clip_type}.{index}.cond"]
            want_pooled = outputs[f"clip.{clip_type}.{index}.pooled"]
            assert cond.shape == want.shape, (clip_type, index)
            assert float((cond - want).abs().max()) < 1e-4, (clip_type, index)
            assert float((pooled - want_pooled).abs().max()) < 1e-4, (clip_type, index)
