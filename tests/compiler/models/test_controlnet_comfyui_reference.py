"""ControlNets and T2I-Adapters against ComfyUI's own code, when a ComfyUI source tree is at hand.

Set ``COMFYUI_SRC`` to a ComfyUI checkout and ``COMFYUI_PYTHON`` to a Python with ComfyUI's
dependencies (default: this one); media packages are stubbed. ComfyUI runs in a subprocess on
files and inputs written here and returns its tensors in a safetensors file. Checked:

* detection on published shape tables (meta tensors): ``model_config_from_unet`` and
  ``unet_config_from_diffusers_unet`` facts (depths, widths, context, ADM, heads) for the SD1.5,
  SD2.1, SDXL, SDXL-mid and SDXL-small ControlNets in both layouts, and ``load_t2i_adapter``'s
  adapter class, widths, unshuffle and input channels for the full, canny, light and SDXL adapters;
* ``comfy.controlnet.load_controlnet`` on comfyc's tiny files (no missing keys): the raw
  ``cldm.ControlNet`` outputs against `ControlNetStage`; the diff ControlNet (with a MODEL) and
  the Control-LoRA (``ControlLora.pre_run`` on the MODEL) likewise; T2I-Adapters (TencentARC and
  diffusers names, tiny full/SDXL and the full-size light one) at even and odd sizes against
  `T2IAdapterStage`, and where ComfyUI adds each feature;
* the runtime recipe of ``comfyc.compiler.models.controlnet``'s docstring, computed with the lean
  runtime's ``common_upscale`` and ``model_sampling``, against ``ControlNet.get_control`` /
  ``T2IAdapter.get_control`` over several sigmas: hint resizing (center crop, nearest-exact),
  strength, timestep ranges, global average pooling (a ``*_shuffle`` file) and chaining;
* ComfyUI's ``UNetModel`` with that control against diffusers' UNet with
  ``down_block_additional_residuals``/``mid_block_additional_residual`` (tiny SD1 and SDXL) and
  ``down_intrablock_additional_residuals`` (the T2I host UNets): outputs within 1e-4.

The tiny SD1 files have attention at 32 channels, which matches no ComfyUI model class; ComfyUI's
fallback (64 channels per head) cannot build them, so for them the subprocess gives the fallback
SD1.5's head rule (8 heads), which is also what their UNet has.
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
pytest.importorskip("diffusers")

_SOURCE = os.environ.get("COMFYUI_SRC")

pytestmark = pytest.mark.skipif(
    not _SOURCE or not (Path(_SOURCE) / "comfy" / "controlnet.py").is_file(),
    reason="set COMFYUI_SRC to a ComfyUI source tree to compare against ComfyUI's own code",
)

_SCRIPT = r'''
import importlib.abc, importlib.machinery, json, logging, sys, types
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
import comfy.controlnet, comfy.model_detection, comfy.model_management, comfy.model_sampling
import comfy.ops, comfy.supported_models_base
from comfy.ldm.modules.diffusionmodules import openaimodel
from safetensors.torch import load_file, save_file


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


messages = _Messages()
logging.getLogger().addHandler(messages)
logging.getLogger().setLevel(logging.DEBUG)
job = json.loads(sys.stdin.read())
inputs = load_file(job["inputs"])
tensors, out = {}, {"tables": {}, "loads": {}, "t2i": {}, "recipe": {}}
FACTS = ["model_channels", "in_channels", "channel_mult", "num_res_blocks", "transformer_depth",
         "transformer_depth_middle", "context_dim", "use_linear_in_transformer",
         "adm_in_channels", "num_heads", "num_head_channels"]
SD15_HEADS = {"num_heads": 8, "num_head_channels": -1}


def sd15_heads(on):
    comfy.supported_models_base.BASE.unet_extra_config = (
        SD15_HEADS if on else {"num_heads": -1, "num_head_channels": 64})


for name, table in job["tables"].items():
    state = {k: torch.empty(v, device="meta") for k, v in table["shapes"].items()}
    if table["kind"] == "t2i":
        with torch.device("meta"):
            net = comfy.controlnet.load_t2i_adapter(state)
        model = net.t2i_model
        out["tables"][name] = {"class": type(model).__name__, "channels": list(model.channels),
                               "nums_rb": model.nums_rb, "xl": bool(model.xl),
                               "unshuffle_amount": model.unshuffle_amount,
                               "input_channels": net.channels_in}
        continue
    if table["kind"] == "ldm":
        config = comfy.model_detection.model_config_from_unet(state, "control_model.", True)
        config = dict(config.unet_config)
    else:
        config = dict(comfy.model_detection.unet_config_from_diffusers_unet(state))
    out["tables"][name] = {k: config.get(k, -1 if k.startswith("num_head") else None)
                           for k in FACTS}


def load(name, spec):
    sd15_heads(spec.get("sd15_heads", False))
    del messages.lines[:]
    model = None
    if "unet" in spec:
        # NOTE: DiffControlNetLoader's MODEL: only model_state_dict() is read (after loading).
        weights = {"diffusion_model." + k: v for k, v in load_file(spec["unet"]).items()}
        model = types.SimpleNamespace(model_state_dict=lambda: weights)
        comfy.model_management.load_models_gpu = lambda *a, **k: None
    net = comfy.controlnet.load_controlnet(spec["path"], model)
    out["loads"][name] = {"class": type(net).__name__,
                          "gap": bool(getattr(net, "global_average_pooling", False)),
                          "missing": [m for m in messages.lines if "missing" in m]}
    sd15_heads(False)
    return net


def unet_model(path, heads):
    sd = load_file(path)
    prefix = "model.diffusion_model."
    config = dict(comfy.model_detection.detect_unet_config(sd, prefix))
    config.update(heads)
    config.update(dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    config.pop("use_temporal_resblock", None)
    config.pop("use_temporal_attention", None)
    unet = openaimodel.UNetModel(**config)
    missing, unexpected = unet.load_state_dict(
        {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return unet, config


class Sampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    pass


sampling = Sampling()
heads_of = {"sd1": SD15_HEADS, "sdxl": {"num_heads": -1, "num_head_channels": 64}}
unets = {name: unet_model(path, heads_of[name.split("_")[-1]])
         for name, path in job["unets"].items()}
controlnets = {}
with torch.no_grad():
    for name, spec in job["controlnets"].items():
        net = load(name, spec)
        if spec.get("control_lora"):
            unet, config = unets[spec["control_lora"]]
            fake = types.SimpleNamespace(
                model_config=types.SimpleNamespace(unet_config=dict(config, out_channels=4)),
                diffusion_model=unet, manual_cast_dtype=None, get_dtype=lambda: torch.float32,
                model_sampling=sampling)
            net.pre_run(fake, sampling.percent_to_sigma)
        controlnets[name] = net
        y = inputs.get(f"{name}.y")
        result = net.control_model(x=inputs[f"{name}.x"], hint=inputs[f"{name}.hint"],
                                   timesteps=inputs[f"{name}.t"],
                                   context=inputs[f"{name}.context"], y=y)
        for i, value in enumerate(result["output"]):
            tensors[f"{name}.out.{i}"] = value.contiguous()
        tensors[f"{name}.mid"] = result["middle"][0].contiguous()
        if spec.get("unet"):
            continue
        target = spec.get("unet_check")
        if target:
            # NOTE: the UNet with this control at strength 0.8 (apply_control pops the lists).
            control = {"output": [v * 0.8 for v in result["output"]],
                       "middle": [result["middle"][0] * 0.8]}
            unet = unets[target][0]
            tensors[f"{name}.unet"] = unet(inputs[f"{name}.x"], timesteps=inputs[f"{name}.t"],
                                           context=inputs[f"{name}.context"], y=y,
                                           control=control).contiguous()
            tensors[f"{name}.unet_plain"] = unet(inputs[f"{name}.x"],
                                                 timesteps=inputs[f"{name}.t"],
                                                 context=inputs[f"{name}.context"],
                                                 y=y).contiguous()

    for name, spec in job["adapters"].items():
        net = load(name, spec)
        controlnets[name] = net
        for size in spec["sizes"]:
            key = f"{name}.{size}"
            features = net.t2i_model(inputs[f"{key}.hint"])
            ordered = list(reversed(features["input"]))
            blocks = [i for i, f in enumerate(ordered) if f is not None]
            values = [f for f in ordered if f is not None] + list(features.get("middle", []))
            out["t2i"][name] = {"blocks": blocks, "middle": len(features.get("middle", [])),
                                "unshuffle": net.t2i_model.unshuffle_amount}
            for i, value in enumerate(values):
                tensors[f"{key}.feature.{i}"] = value.contiguous()
            target = spec.get("unet_check")
            if target and f"{key}.x" in inputs:
                unet = unets[target][0]
                control = {"input": [None if f is None else f * 0.8 for f in features["input"]],
                           "middle": [f * 0.8 for f in features.get("middle", [])]}
                tensors[f"{key}.unet"] = unet(inputs[f"{key}.x"], timesteps=inputs[f"{key}.t"],
                                              context=inputs[f"{key}.context"],
                                              y=inputs.get(f"{key}.y"),
                                              control=control).contiguous()

    for name, recipe in job["recipe"].items():
        previous = None
        for link in recipe["chain"]:
            # NOTE: as nodes.ControlNetApplyAdvanced: copy, set_cond_hint, set_previous_controlnet
            image = inputs[f"{name}.{link['image']}"].movedim(-1, 1)
            control = controlnets[link["control"]].copy().set_cond_hint(
                image, link["strength"], tuple(link["range"]), vae=None, extra_concat=[])
            control.set_previous_controlnet(previous)
            previous = control
        fake = types.SimpleNamespace(model_sampling=sampling)
        previous.pre_run(fake, sampling.percent_to_sigma)
        cond = {"c_crossattn": inputs[f"{name}.context"]}
        if f"{name}.y" in inputs:
            cond["y"] = inputs[f"{name}.y"]
        x = inputs[f"{name}.x"]
        steps = []
        for index, sigma in enumerate(recipe["sigmas"]):
            t = torch.full((x.shape[0],), float(sigma))
            result = previous.get_control(x, t, cond, 2, {})
            if result is None:
                steps.append(None)
                continue
            slots = {}
            for slot, values in result.items():
                slots[slot] = [None if v is None else i for i, v in enumerate(values)]
                for i, value in enumerate(values):
                    if value is not None:
                        tensors[f"{name}.{index}.{slot}.{i}"] = value.float().contiguous()
            steps.append(slots)
        out["recipe"][name] = steps
        previous.cleanup()
save_file(tensors, job["outputs"])
print("RESULT " + json.dumps(out))
'''


# -- published tables ----------------------------------------------------------------------------


def _tables() -> dict[str, dict[str, Any]]:
    from test_controlnet import (
        SD15_CONTROLNET,
        SD21_CONTROLNET,
        SDXL_CONTROLNET,
        SDXL_MID_CONTROLNET,
        SDXL_SMALL_CONTROLNET,
        T2I_LIGHT,
        T2I_SD15,
        T2I_SD15_CANNY,
        T2I_SDXL,
        _meta_adapter,
        _meta_controlnet,
    )

    from comfyc.compiler.models.controlnet import (
        controlnet_diffusers_to_ldm_map,
        t2i_diffusers_to_ldm_map,
    )

    tables: dict[str, dict[str, Any]] = {}
    for name, config in (("sd15", SD15_CONTROLNET), ("sd21", SD21_CONTROLNET),
                         ("sdxl", SDXL_CONTROLNET), ("sdxl_mid", SDXL_MID_CONTROLNET),
                         ("sdxl_small", SDXL_SMALL_CONTROLNET)):
        state = _meta_controlnet(config).state_dict()
        shapes = {k: list(v.shape) for k, v in state.items()}
        mapping = controlnet_diffusers_to_ldm_map(shapes)
        tables[f"{name}.ldm"] = {"kind": "ldm", "shapes": {
            "control_model." + mapping[k]: v for k, v in shapes.items()}}
        tables[f"{name}.diffusers"] = {"kind": "diffusers", "shapes": shapes}
    for name, config in (("t2i_sd15", T2I_SD15), ("t2i_canny", T2I_SD15_CANNY),
                         ("t2i_light", T2I_LIGHT), ("t2i_sdxl", T2I_SDXL)):
        state = _meta_adapter(config).state_dict()
        mapping = t2i_diffusers_to_ldm_map(state.keys(), config["adapter_type"])
        tables[name] = {"kind": "t2i", "shapes": {mapping[k]: list(v.shape)
                                                  for k, v in state.items()}}
    return tables


# -- the comparison ------------------------------------------------------------------------------


def _close(ours: Any, theirs: Any, what: str) -> None:
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    # NOTE: the same float32 maths through other kernels (attention, norms): ~1e-6.
    scale = max(float(theirs.abs().max()), 1.0)
    assert float((ours - theirs).abs().max()) < 1e-4 * scale, what


def test_controlnets_match_comfyui_code(tmp_path: Path) -> None:
    """Detection, loading, outputs, the runtime recipe and the UNet with control agree."""
    from safetensors.torch import load_file, save_file

    from comfyc.compiler.models.controlnet import (
        LoadedControlNet,
        LoadedT2IAdapter,
        detect_control_model,
        load_controlnet,
    )
    from comfyc.compiler.models.controlnet_synthetic import (
        write_adapter_host_checkpoint,
        write_controlnet,
        write_t2i_adapter,
    )
    from comfyc.compiler.models.sdxl import SdxlUNet
    from comfyc.compiler.models.single_file import load_checkpoint
    from comfyc.compiler.models.synthetic import write_checkpoint
    from comfyc.runtime.model_sampling import model_sampling_discrete
    from comfyc.runtime.ops.resample import common_upscale

    sys.path.insert(0, str(Path(__file__).parent))
    torch.set_num_threads(1)
    f32 = {"dtype": torch.float32, "jitter": 0.05}
    paths: dict[str, Path] = {}
    for family, synthetic in (("sd1", "sd15"), ("sdxl", "sdxl")):
        paths[f"ckpt_{family}"] = write_checkpoint(tmp_path / f"ckpt_{family}.safetensors",
                                                   synthetic, "tiny", seed=1, **f32)
        paths[f"host_{family}"] = write_adapter_host_checkpoint(
            tmp_path / f"host_{family}.safetensors", family, seed=2, **f32)
        paths[f"cn_{family}"] = write_controlnet(tmp_path / f"cn_{family}.safetensors", family,
                                                 seed=3, **f32)
        paths[f"t2i_{family}"] = write_t2i_adapter(tmp_path / f"t2i_{family}.safetensors",
                                                   family, seed=4, **f32)
        paths[f"t2i_{family}_diffusers"] = write_t2i_adapter(
            tmp_path / f"t2i_{family}_diffusers.safetensors", family, seed=4, layout="diffusers",
            **f32)
    paths["cn_shuffle"] = write_controlnet(tmp_path / "control_sdxl_shuffle.safetensors", "sdxl",
                                           seed=5, **f32)
    paths["diff_sd1"] = write_controlnet(tmp_path / "diff_sd1.safetensors", "sd1", seed=3,
                                         variant="diff", base=paths["ckpt_sd1"], **f32)
    paths["lora_sdxl"] = write_controlnet(tmp_path / "lora_sdxl.safetensors", "sdxl", seed=6,
                                          variant="control_lora", base=paths["ckpt_sdxl"],
                                          rank=4, **f32)
    paths["t2i_light"] = write_t2i_adapter(tmp_path / "t2i_light.safetensors", "sd1", "full",
                                           seed=7, kind="light", **f32)
    checkpoints = {k: load_checkpoint(paths[k]) for k in
                   ("ckpt_sd1", "ckpt_sdxl", "host_sd1", "host_sdxl")}
    unet_files = {}
    for key in checkpoints:
        # NOTE: the MODEL's UNet weights under original names, for ComfyUI's fake MODELs.
        state = load_file(str(paths[key]))
        unet_files[key] = tmp_path / f"{key}.unet.safetensors"
        save_file({k[len("model.diffusion_model."):]: v for k, v in state.items()
                   if k.startswith("model.diffusion_model.")}, str(unet_files[key]))
    ours: dict[str, LoadedControlNet | LoadedT2IAdapter] = {
        "cn_sd1": load_controlnet(paths["cn_sd1"]),
        "cn_sdxl": load_controlnet(paths["cn_sdxl"]),
        "cn_shuffle": load_controlnet(paths["cn_shuffle"]),
        "diff_sd1": load_controlnet(paths["diff_sd1"], unet=checkpoints["ckpt_sd1"].unet),
        "lora_sdxl": load_controlnet(paths["lora_sdxl"], unet=checkpoints["ckpt_sdxl"].unet),
        "t2i_sd1": load_controlnet(paths["t2i_sd1"]),
        "t2i_sd1_diffusers": load_controlnet(paths["t2i_sd1_diffusers"]),
        "t2i_sdxl": load_controlnet(paths["t2i_sdxl"]),
        "t2i_sdxl_diffusers": load_controlnet(paths["t2i_sdxl_diffusers"]),
        "t2i_light": load_controlnet(paths["t2i_light"]),
    }

    generator = torch.Generator().manual_seed(11)
    inputs: dict[str, Any] = {}
    controlnet_jobs: dict[str, dict[str, Any]] = {}
    for name, family in (("cn_sd1", "sd1"), ("cn_sdxl", "sdxl"), ("cn_shuffle", "sdxl"),
                         ("diff_sd1", "sd1"), ("lora_sdxl", "sdxl")):
        loaded = ours[name]
        assert isinstance(loaded, LoadedControlNet)
        inputs[f"{name}.x"] = torch.randn(2, 4, 5, 7, generator=generator)
        inputs[f"{name}.hint"] = torch.rand(1, 3, 40, 56, generator=generator)
        inputs[f"{name}.t"] = torch.tensor([981.0, 41.0])
        inputs[f"{name}.context"] = torch.randn(2, 9, loaded.context_dim, generator=generator)
        if loaded.adm_in_channels is not None:
            inputs[f"{name}.y"] = torch.randn(2, loaded.adm_in_channels, generator=generator)
        spec: dict[str, Any] = {"path": str(paths[name]), "sd15_heads": family == "sd1"}
        if name in ("cn_sd1", "cn_sdxl"):
            spec["unet_check"] = f"ckpt_{family}"
        if name == "diff_sd1":
            spec["unet"] = str(unet_files["ckpt_sd1"])
        if name == "lora_sdxl":
            spec["control_lora"] = "ckpt_sdxl"
        controlnet_jobs[name] = spec
    adapter_jobs: dict[str, dict[str, Any]] = {}
    for name, sizes, host in (("t2i_sd1", [(40, 56), (72, 88)], "host_sd1"),
                              ("t2i_sd1_diffusers", [(72, 88)], None),
                              ("t2i_sdxl", [(48, 64), (80, 112)], "host_sdxl"),
                              ("t2i_sdxl_diffusers", [(48, 64)], None),
                              ("t2i_light", [(64, 72)], None)):
        adapter = ours[name]
        assert isinstance(adapter, LoadedT2IAdapter)
        for height, width in sizes:
            key = f"{name}.{height}x{width}"
            inputs[f"{key}.hint"] = torch.rand(1, 3, height, width, generator=generator)
            if host and (height, width) == sizes[0]:
                # NOTE: latent 5x7: the SDXL hint is rounded up to 48x64 (multiple of 16).
                unet = checkpoints[host].unet
                inputs[f"{key}.x"] = torch.randn(2, 4, 5, 7, generator=generator)
                inputs[f"{key}.t"] = torch.tensor([700.0, 5.0])
                inputs[f"{key}.context"] = torch.randn(2, 9, unet.config.cross_attention_dim,
                                                       generator=generator)
                if host == "host_sdxl":
                    width_y = unet.config.projection_class_embeddings_input_dim
                    inputs[f"{key}.y"] = torch.randn(2, width_y, generator=generator)
        adapter_jobs[name] = {"path": str(paths[name]), "sizes": [f"{h}x{w}" for h, w in sizes],
                              "unet_check": host}

    model_sampling = model_sampling_discrete("eps")
    sigmas = [14.0, 6.0, 2.5, 1.2, 0.5, 0.08]
    recipes: dict[str, dict[str, Any]] = {
        # NOTE: an SDXL ControlNet chained with a *_shuffle one (global average pooling).
        "chain": {"chain": [
            {"control": "cn_sdxl", "image": "image_a", "strength": 0.7, "range": [0.0, 1.0]},
            {"control": "cn_shuffle", "image": "image_b", "strength": 1.3, "range": [0.2, 0.6]},
        ], "sigmas": sigmas},
        "adapter": {"chain": [
            {"control": "t2i_sd1", "image": "image_a", "strength": 0.8, "range": [0.0, 0.5]},
        ], "sigmas": sigmas},
        "adapter_xl": {"chain": [
            {"control": "t2i_sdxl", "image": "image_a", "strength": 1.1, "range": [0.3, 1.0]},
        ], "sigmas": sigmas},
    }
    recipe_shapes = {"chain": (2, 4, 8, 10), "adapter": (2, 4, 9, 11), "adapter_xl": (2, 4, 5, 7)}
    for name, shape in recipe_shapes.items():
        inputs[f"{name}.x"] = torch.randn(*shape, generator=generator)
        inputs[f"{name}.image_a"] = torch.rand(1, 50, 70, 3, generator=generator)
        inputs[f"{name}.image_b"] = torch.rand(1, 40, 40, 3, generator=generator)
        inputs[f"{name}.context"] = torch.randn(2, 9, 192, generator=generator)
        if name == "chain":
            inputs[f"{name}.y"] = torch.randn(2, 1664, generator=generator)

    job = {"tables": _tables(), "controlnets": controlnet_jobs, "adapters": adapter_jobs,
           "unets": {"ckpt_sd1": str(paths["ckpt_sd1"]), "ckpt_sdxl": str(paths["ckpt_sdxl"]),
                     "host_sd1": str(paths["host_sd1"]), "host_sdxl": str(paths["host_sdxl"])},
           "recipe": recipes, "inputs": str(tmp_path / "inputs.safetensors"),
           "outputs": str(tmp_path / "outputs.safetensors")}
    save_file({k: v.contiguous() for k, v in inputs.items()}, job["inputs"])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=_SOURCE or "")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    result = subprocess.run([python, "-c", _SCRIPT], input=json.dumps(job), capture_output=True,
                            text=True, cwd=_SOURCE, env=env, timeout=1800, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT "):])
    theirs = load_file(job["outputs"])

    # Detection facts on the published tables.
    for name, table in job["tables"].items():
        facts = out["tables"][name]
        state = {k: torch.empty(v, device="meta") for k, v in table["shapes"].items()}
        detected = detect_control_model(state)
        if table["kind"] == "t2i":
            kind = {"Adapter": ("full_adapter", "full_adapter_xl"),
                    "Adapter_light": ("light_adapter",)}[facts["class"]]
            assert detected.config is not None
            assert detected.config["adapter_type"] in kind, name
            assert detected.facts["channels"] == facts["channels"], name
            assert detected.facts["xl"] == facts["xl"], name
            assert detected.config["downscale_factor"] == facts["unshuffle_amount"], name
            assert detected.config["in_channels"] == facts["input_channels"], name
            continue
        mine = {k: detected.facts[k] for k in facts}
        if name.startswith("sdxl_small"):
            # NOTE: without any transformer block the context width is unknown (ComfyUI's
            # diffusers table says 1) and, in the original layout, ComfyUI reads the proj_in kind
            # from input blocks only (none have attention): it says conv, where the middle
            # block's proj_in is linear; ComfyUI's cldm then refuses context None, comfyc loads it.
            mine["context_dim"] = facts["context_dim"]
            if name.endswith(".ldm"):
                assert facts["use_linear_in_transformer"] is False
                mine["use_linear_in_transformer"] = False
        assert mine == facts, name

    # Loading and raw outputs.
    for name, load in out["loads"].items():
        assert load["missing"] == [], (name, load)
    assert out["loads"]["cn_shuffle"]["gap"] and not out["loads"]["cn_sdxl"]["gap"]
    assert out["loads"]["lora_sdxl"]["class"] == "ControlLora"
    assert {out["loads"][k]["class"] for k in adapter_jobs} == {"T2IAdapter"}
    with torch.no_grad():
        for name in controlnet_jobs:
            loaded = ours[name]
            assert isinstance(loaded, LoadedControlNet)
            args = [inputs[f"{name}.{k}"] for k in ("x", "hint", "t", "context")]
            if f"{name}.y" in inputs:
                args.append(inputs[f"{name}.y"])
            # NOTE: raw cldm outputs: the pooling is control_merge's, compare unpooled here.
            pooled = loaded.global_average_pooling
            loaded.global_average_pooling = False
            residuals = loaded.stage()(*args)
            loaded.global_average_pooling = pooled
            assert len(residuals) == loaded.residual_count + 1
            for i, value in enumerate(residuals[:-1]):
                _close(value, theirs[f"{name}.out.{i}"], f"{name} down {i}")
            _close(residuals[-1], theirs[f"{name}.mid"], f"{name} mid")
            if f"{name}.unet" in theirs:
                family = name.split("_")[1]
                unet = checkpoints[f"ckpt_{family}"].unet
                extra = {"down_block_additional_residuals": [r * 0.8 for r in residuals[:-1]],
                         "mid_block_additional_residual": residuals[-1] * 0.8}
                if family == "sdxl":
                    got = SdxlUNet(unet)(args[0], args[2], args[3], args[4], **extra)
                else:
                    got = unet(args[0], args[2], args[3], **extra).sample
                _close(got, theirs[f"{name}.unet"], f"{name} UNet with control")
                assert float((got - theirs[f"{name}.unet_plain"]).abs().max()) > 1e-3

        for name, spec in adapter_jobs.items():
            adapter = ours[name]
            assert isinstance(adapter, LoadedT2IAdapter)
            facts = out["t2i"][name]
            # NOTE: where ComfyUI adds the features (input block indices, mid) - the docstring.
            if adapter.adapter_type == "full_adapter_xl":
                assert facts["blocks"] == [3, 5, 8] and facts["middle"] == 1
            else:
                assert facts["blocks"] == [2, 5, 8, 11] and facts["middle"] == 0
            assert facts["unshuffle"] == adapter.unshuffle_amount
            for size in spec["sizes"]:
                key = f"{name}.{size}"
                features = adapter.stage()(inputs[f"{key}.hint"])
                for i, value in enumerate(features):
                    _close(value, theirs[f"{key}.feature.{i}"], f"{key} feature {i}")
                if f"{key}.unet" in theirs:
                    unet = checkpoints[spec["unet_check"]].unet
                    x, t, context = (inputs[f"{key}.{k}"] for k in ("x", "t", "context"))
                    # NOTE: batch 1 -> the UNet's batch (diffusers' mid check compares shapes).
                    residuals = [(f * 0.8).expand(x.shape[0], -1, -1, -1) for f in features]
                    if f"{key}.y" in inputs:
                        got = SdxlUNet(unet)(x, t, context, inputs[f"{key}.y"],
                                             down_intrablock_additional_residuals=residuals)
                    else:
                        got = unet(x, t, context,
                                   down_intrablock_additional_residuals=residuals).sample
                    _close(got, theirs[f"{key}.unet"], f"{key} UNet with adapter")

    # The runtime recipe (module docstring) with the lean runtime's ops.
    def active(start: float, end: float, sigma: float) -> bool:
        return model_sampling.percent_to_sigma(end) <= sigma <= model_sampling.percent_to_sigma(
            start)

    compared = {name: 0 for name in recipes}
    for name, recipe in recipes.items():
        x = inputs[f"{name}.x"]
        steps = out["recipe"][name]
        assert any(s is None for s in steps) or name == "chain"
        for index, sigma in enumerate(recipe["sigmas"]):
            total: list[Any] | None = None
            for link in recipe["chain"]:
                if not active(link["range"][0], link["range"][1], sigma):
                    continue
                control = ours[link["control"]]
                image = inputs[f"{name}.{link['image']}"].numpy().transpose(0, 3, 1, 2)
                with torch.no_grad():
                    if isinstance(control, LoadedControlNet):
                        height, width = x.shape[2] * 8, x.shape[3] * 8
                        hint = torch.from_numpy(common_upscale(image, width, height,
                                                               "nearest-exact", "center"))
                        x_in = torch.from_numpy(model_sampling.calculate_input(sigma, x.numpy()))
                        t = torch.full((x.shape[0],), float(model_sampling.timestep(sigma)))
                        args = [x_in, hint, t, inputs[f"{name}.context"]]
                        if f"{name}.y" in inputs:
                            args.append(inputs[f"{name}.y"])
                        values = list(control.stage()(*args))
                    else:
                        width, height = control.hint_size(x.shape[3], x.shape[2])
                        hint = torch.from_numpy(common_upscale(image, width, height,
                                                               "nearest-exact", "center"))
                        values = list(control.stage()(hint))
                values = [v * link["strength"] for v in values]
                total = values if total is None else [a + b for a, b in zip(total, values)]
            if total is None:
                assert steps[index] is None, (name, sigma)
                continue
            assert steps[index] is not None, (name, sigma)
            if steps[index]["output"]:
                slots = [f"{index}.output.{i}" for i in steps[index]["output"]]
                slots.append(f"{index}.middle.0")
            else:
                # NOTE: ComfyUI's reversed 'input' list with None placeholders, then 'middle'.
                count = len(steps[index]["input"])
                slots = [f"{index}.input.{i}" for i in reversed(range(count))
                         if steps[index]["input"][i] is not None]
                slots += [f"{index}.middle.{i}" for i, v in enumerate(
                    steps[index].get("middle", [])) if v is not None]
            assert len(slots) == len(total), (name, sigma)
            for slot, value in zip(slots, total):
                _close(value, theirs[f"{name}.{slot}"], f"{name} sigma {sigma} {slot}")
                compared[name] += 1
    # NOTE: chain: 4 steps with A, 2 with A + B (7 slots each); adapters: 4 features a step.
    assert compared == {"chain": 6 * 7, "adapter": 3 * 4, "adapter_xl": 4 * 4}, compared
