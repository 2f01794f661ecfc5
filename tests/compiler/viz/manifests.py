"""Hand-made artifacts for the viz tests: a manifest.json shaped like `comfyc compile`'s for
examples/txt2img.cfy, with the autotuner's record (``manifest["autotune"]``), and no model
files (viz reads only the manifest)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from comfyc.compiler.catalog import default_catalog
from comfyc.frontends.comfy_json.api import graph_to_api
from comfyc.frontends.dsl import parse_dsl
from comfyc.runtime.manifest import manifest_hash
from tests.conftest import REPO

__all__ = ["AFTER_DSL", "DECODER", "TEXT", "TXT2IMG", "UNET", "write_artifact"]

TXT2IMG = REPO / "examples" / "txt2img.cfy"
UNET, TEXT, DECODER = "unet_abc", "text_encoder_abc_L1", "vae_decoder_abc"

#: What the passes make of examples/txt2img.cfy (the negative prompt folded).
AFTER_DSL = """\
param seed: INT = 42 [min=0, max=18446744073709551615]
param prompt: STRING = "a handwritten digit seven"

ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")
positive = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)
negative = FoldedConditioning(key="cond.3")
latent = EmptyLatentImage(width=64, height=64, batch_size=1)
sampler = KSampler(model=ckpt.MODEL, seed=seed, steps=20, cfg=5.0, sampler_name="euler",
                   scheduler="normal", positive=positive, negative=negative,
                   latent_image=latent, denoise=1.0)
image = VAEDecode(samples=sampler, vae=ckpt.VAE)
SaveImage(images=image, filename_prefix="txt2img")

output image
"""


def _ref(node: str, index: int) -> dict[str, Any]:
    return {"$ref": [node, index]}


def _ops() -> list[dict[str, Any]]:
    return [
        {"id": "1", "op": "LoadCheckpoint", "args": {
            "unet": {"$stage": "unet_abc"},
            "clip": {"order": ["clip_l"], "encoders": {"clip_l": {
                "stages": {"$stage": "text_encoder_abc"}, "pad_token": 49407,
                "default_layer": -1, "pooled": True}}},
            "vae_decoder": {"$stage": "vae_decoder_abc"},
            "vae_encoder": {"$stage": "vae_encoder_abc"},
            "name": "tiny-digits.safetensors"}},
        {"id": "2", "op": "CLIPTextEncode", "args": {"text": {"$param": "prompt"},
                                                     "clip": _ref("1", 1)}},
        {"id": "3", "op": "ConditioningConstant", "args": {"entries": {"$const": "cond.3"}}},
        {"id": "4", "op": "EmptyLatentImage", "args": {"width": 64, "height": 64,
                                                       "batch_size": 1}},
        {"id": "5", "op": "KSampler", "args": {
            "model": _ref("1", 0), "seed": {"$param": "seed"}, "steps": 20, "cfg": 5.0,
            "sampler_name": "euler", "scheduler": "normal", "positive": _ref("2", 0),
            "negative": _ref("3", 0), "latent_image": _ref("4", 0), "denoise": 1.0,
            "sigmas": {"$const": "sigmas.5"}}},
        {"id": "6", "op": "VAEDecode", "args": {"samples": _ref("5", 0), "vae": _ref("1", 2)}},
        {"id": "7", "op": "SaveImage", "args": {"images": _ref("6", 0),
                                                "filename_prefix": "txt2img"}},
        {"id": "output:image", "op": "Output", "args": {"name": "image",
                                                        "value": _ref("6", 0)}},
    ]


def write_artifact(root: Path, *, autotune: bool = True, source: str = "file") -> Path:
    """Write ``root/txt2img.comfyc/manifest.json``; returns the artifact directory.

    Args:
        root: A temporary folder.
        autotune: Add the autotuner's record (unet measured on two backends).
        source: ``file`` (a copy of the workflow beside the artifact, hash recorded),
            ``none`` (no source anywhere) or ``text`` (the text inside the manifest).
    """
    catalog = default_catalog()
    text = TXT2IMG.read_text(encoding="utf-8")
    artifact = root / "txt2img.comfyc"
    artifact.mkdir(parents=True)
    copy = root / "txt2img.cfy"
    if source == "file":
        shutil.copyfile(TXT2IMG, copy)
    manifest: dict[str, Any] = {
        "format": "comfyc-artifact", "format_version": 2, "comfyc_version": "test",
        "source": {"file": str(copy) if source == "file" else "gone.cfy", "kind": "dsl",
                   "sha256": hashlib.sha256(text.encode()).hexdigest(), "prompt": None},
        "params": [], "outputs": ["7"], "program": {"ops": _ops()},
        "stages": {
            "unet_abc": {"kind": "unet", "backend": "ort-cuda", "file": "stages/unet_abc.onnx"},
            "text_encoder_abc": {"kind": "text_encoder_layers", "layers": {"-1": {
                "kind": "text_encoder", "backend": "ort-cpu", "name": TEXT}}},
            "vae_decoder_abc": {"kind": "vae_decoder", "backend": "torch",
                                "fallback": "ExportError: test"},
            "vae_encoder_abc": {"kind": "vae_encoder", "unused": True},
        },
        "plan": {UNET: "ort-cuda", TEXT: "ort-cpu", DECODER: "torch"},
        "run_meta": {"prompt": graph_to_api(parse_dsl(text, "txt2img.cfy", catalog))},
        "optimized": AFTER_DSL,
        "changes": [
            {"pass": "runtime-params", "action": "param", "node": "5", "class_type": "KSampler",
             "into": "seed"},
            {"pass": "constant-folding", "action": "folded", "node": "3",
             "class_type": "CLIPTextEncode", "into": "cond.3",
             "detail": "CLIPTextEncode → constant conditioning"},
            {"pass": "constant-folding", "action": "schedule", "node": "5",
             "class_type": "KSampler"},
        ],
        "stats": {"nodes_before": 7, "nodes_after": 7, "folded": 1, "schedules": 1},
        "options": {"lora_runtime": False},
        "files": {"stages/unet_abc.onnx": "0" * 64},  # Not read: viz does not verify.
    }
    if source == "text":
        manifest["source"]["text"] = text
    if autotune:
        manifest["autotune"] = {
            "machine": {"cpu": "test cpu", "gpu": "test gpu"},
            "stages": {UNET: {"choice": "ort-cuda", "margin": 3.2, "measurements": {
                "ort-cuda": {"median_ms": 12.34, "p90_ms": 13.0, "calls": 20},
                "ort-cpu": {"median_ms": 39.5, "p90_ms": 41.0, "calls": 20}}}},
        }
    manifest["manifest_hash"] = manifest_hash(manifest)
    (artifact / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return artifact
