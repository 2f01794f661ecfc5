"""Shared test setup: the verifier is always on, and ../shared is located once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("COMFYC_VERIFY", "1")
# Two pytest workers share two cores: spinning OpenMP threads (torch's default) make every
# torch call crawl while the other worker holds a core, so threads wait passively and each
# worker uses one.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
CORPUS = SHARED / "corpus" / "comfyui-examples"
DATA = REPO / "tests" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip GPU tests unless a CUDA device is present."""
    has_gpu = False
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The ComfyUI example corpus (read-only)."""
    if not CORPUS.is_dir():
        pytest.fail(f"the shared corpus is missing at {CORPUS}")
    return CORPUS


def build_random_sd1(seed: int = 0):  # type: ignore[no-untyped-def]
    """A tiny random SD1.x model (the spikes' "tiny" sizes): unet, vae, text_encoder."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407))
    unet = UNet2DConditionModel(
        sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=8,
        latent_channels=4)
    return unet.eval(), vae.eval(), text.eval()


@pytest.fixture(scope="session")
def random_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder (ComfyUI layout) with a random tiny SD1 checkpoint and a LoRA.

    Files: checkpoints/random-sd1.safetensors, loras/random-lora.safetensors.
    """
    from safetensors.torch import save_file

    from comfyc.compiler.models.lora import make_random_lora
    from comfyc.compiler.models.single_file import save_single_file

    root = tmp_path_factory.mktemp("models")
    (root / "checkpoints").mkdir()
    (root / "loras").mkdir()
    unet, vae, text = build_random_sd1()
    save_single_file(root / "checkpoints" / "random-sd1.safetensors", unet, vae, text)
    lora = make_random_lora(unet, text, rank=4, seed=1, scale=0.2)
    save_file({k: v.contiguous() for k, v in lora.items()},
              str(root / "loras" / "random-lora.safetensors"))
    return root


#: File names the SDXL tests give the tiny random checkpoints (the real files' names, so
#: ComfyUI's own example workflows run on them unchanged).
SDXL_BASE = "sd_xl_base_1.0.safetensors"
SDXL_REFINER = "sd_xl_refiner_1.0.safetensors"


@pytest.fixture(scope="session")
def sdxl_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with tiny seeded SDXL base and refiner checkpoints (same structure as
    the real ones: CLIP-L + OpenCLIP bigG, ADM, label_emb) and their diffusers folders.

    Norm weights and biases get a small jitter so that a mixed-up bias shows in comparisons.
    Files: checkpoints/sd_xl_base_1.0.safetensors, checkpoints/sd_xl_refiner_1.0.safetensors,
    diffusers/sdxl/, diffusers/sdxl_refiner/.
    """
    import torch

    from comfyc.compiler.models.synthetic import write_checkpoint

    root = tmp_path_factory.mktemp("sdxl-models")
    (root / "checkpoints").mkdir()
    for family, name in (("sdxl", SDXL_BASE), ("sdxl_refiner", SDXL_REFINER)):
        write_checkpoint(root / "checkpoints" / name, family, "tiny", seed=1,
                         dtype=torch.float32, jitter=0.02,
                         diffusers_dir=root / "diffusers" / family)
    return root


#: File names the SD3/Flux tests give the tiny random models (the published files' names, so
#: ComfyUI's own example workflows run on them unchanged).
FLUX_NAMES = {"diffusion_model": "diffusion_models/flux1-dev.safetensors",
              "clip_l": "text_encoders/clip_l.safetensors",
              "t5xxl": "text_encoders/t5xxl_fp16.safetensors", "vae": "vae/ae.safetensors"}
SD3_CHECKPOINT = "sd3.5_medium.safetensors"
SD3_TEXT_NAMES = {"clip_l": "text_encoders/clip_l.safetensors",
                  "clip_g": "text_encoders/clip_g.safetensors",
                  "t5xxl": "text_encoders/t5xxl_fp16.safetensors"}
FLUX_CHECKPOINT = "flux1-dev-fp8.safetensors"
FLUX_SCHNELL_CHECKPOINT = "flux1-schnell-fp8.safetensors"


@pytest.fixture(scope="session")
def flow_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with tiny seeded Flux-dev and SD3.5-medium models (the published
    architectures' structure, random weights): Flux as separate files under the published names
    (``diffusion_models/flux1-dev.safetensors``, ``text_encoders/clip_l.safetensors``,
    ``text_encoders/t5xxl_fp16.safetensors``, ``vae/ae.safetensors``), all-in-one checkpoints
    ``checkpoints/flux1-dev-fp8.safetensors`` (same seed, same weights),
    ``checkpoints/sd3.5_medium.safetensors`` and ``checkpoints/flux1-schnell-fp8.safetensors``,
    diffusers folders ``diffusers/flux_dev`` and ``diffusers/sd35_medium`` for the pipelines,
    and ``sd3/``: a models folder with the SD3.5 checkpoint and its text encoders as separate
    files (``text_encoders/clip_l``, ``clip_g``, ``t5xxl_fp16``)."""
    import os

    import torch

    from comfyc.compiler.models.synthetic import write_checkpoint, write_split_files

    root = tmp_path_factory.mktemp("flow-models")
    written = write_split_files(root, "flux_dev", "tiny", seed=1, dtype=torch.float32,
                                jitter=0.02, stem="flux")
    for role, path in written.items():
        target = root / FLUX_NAMES[role]
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    (root / "checkpoints").mkdir()
    write_checkpoint(root / "checkpoints" / FLUX_CHECKPOINT, "flux_dev", "tiny", seed=1,
                     dtype=torch.float32, jitter=0.02,
                     diffusers_dir=root / "diffusers" / "flux_dev")
    write_checkpoint(root / "checkpoints" / SD3_CHECKPOINT, "sd35_medium", "tiny", seed=2,
                     dtype=torch.float32, jitter=0.02,
                     diffusers_dir=root / "diffusers" / "sd35_medium")
    write_checkpoint(root / "checkpoints" / FLUX_SCHNELL_CHECKPOINT, "flux_schnell", "tiny",
                     seed=3, dtype=torch.float32, jitter=0.02)
    # SD3's own text encoders (the tiny SD3's widths differ from the tiny Flux's), under the
    # published names in a models folder of their own: sd3/.
    sd3 = root / "sd3"
    (sd3 / "checkpoints").mkdir(parents=True)
    os.link(root / "checkpoints" / SD3_CHECKPOINT, sd3 / "checkpoints" / SD3_CHECKPOINT)
    written = write_split_files(sd3, "sd35_medium", "tiny", seed=2, dtype=torch.float32,
                                jitter=0.02, stem="sd35")
    for role, path in written.items():
        if role in SD3_TEXT_NAMES:
            os.replace(path, sd3 / SD3_TEXT_NAMES[role])
        else:
            path.unlink()
    return root


@pytest.fixture(scope="session")
def classifier():  # type: ignore[no-untyped-def]
    """The independent scikit-learn digit classifier of examples/tiny_model."""
    sys.path.insert(0, str(REPO / "examples" / "tiny_model"))
    from classifier import train_classifier

    return train_classifier()
