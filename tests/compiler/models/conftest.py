"""Small, seeded SD1-, SD2- and SDXL-style models shared by the model tests (CPU, float32)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")


@dataclass
class SmallModel:
    """Three modules of a small Stable Diffusion model and its text width."""

    unet: Any
    vae: Any
    text_encoder: Any
    width: int


def make_small_sd1(seed: int = 0) -> SmallModel:
    """An SD1-layout model that follows SD1's shape conventions (8 heads, 64-wide CLIP heads,
    32 norm groups), so it also loads without comfyc's config metadata."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=32,
        latent_channels=4, sample_size=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407,
    ))
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return SmallModel(unet, vae, text_encoder, 128)


def make_small_sd2(seed: int = 1) -> SmallModel:
    """An SD2-layout model: linear proj_in, 64 channels per head, exact-GELU OpenCLIP encoder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, layers_per_block=1, block_out_channels=(64, 128),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128, attention_head_dim=(1, 2), use_linear_projection=True,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=32,
        latent_channels=4, sample_size=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=49406, eos_token_id=49407, projection_dim=128,
    ))
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return SmallModel(unet, vae, text_encoder, 128)


@dataclass
class SmallSdxl:
    """The modules of a small SDXL base or refiner model (refiner: text_encoder is None)."""

    unet: Any
    vae: Any
    text_encoder: Any | None
    text_encoder_2: Any
    family: str


def make_small_sdxl(seed: int = 2, *, refiner: bool = False) -> SmallSdxl:
    """An SDXL-layout model in the tiny synthetic architecture, with diffusers' own random
    initialisation plus noise on every parameter (norm weights and biases differ from 1 and 0,
    so a swapped norm or bias shows in comparisons)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from comfyc.compiler.models.synthetic import model_spec

    spec = model_spec("sdxl_refiner" if refiner else "sdxl", "tiny")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**spec.components["unet"])
    vae = AutoencoderKL(**spec.components["vae"])
    text = None
    if not refiner:
        text = CLIPTextModel(CLIPTextConfig(**spec.components["text_encoder"]))
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**spec.components["text_encoder_2"]))
    for module in (unet, vae, text, text_2):
        if module is None:
            continue
        module.eval().requires_grad_(False)
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return SmallSdxl(unet, vae, text, text_2, spec.family)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Runs each model test with one intra-op thread (restored afterwards).

    NOTE: the tiny models here are latency-bound; on a shared 2-core machine, OpenMP threads
    spinning against other processes made them 10x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def small_sd1() -> SmallModel:
    """Shared SD1-style model; do not modify it (copy first)."""
    return make_small_sd1()


@pytest.fixture(scope="session")
def small_sd2() -> SmallModel:
    """Shared SD2-style model; do not modify it (copy first)."""
    return make_small_sd2()


@pytest.fixture(scope="session")
def sd1_file(small_sd1: SmallModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small SD1 model written as a single .safetensors file (with comfyc metadata)."""
    from comfyc.compiler.models.single_file import save_single_file

    path = tmp_path_factory.mktemp("sd1") / "small-sd1.safetensors"
    return save_single_file(path, small_sd1.unet, small_sd1.vae, small_sd1.text_encoder)


@pytest.fixture(scope="session")
def small_sdxl() -> SmallSdxl:
    """Shared SDXL-style base model; do not modify it (copy first)."""
    return make_small_sdxl()


@pytest.fixture(scope="session")
def small_refiner() -> SmallSdxl:
    """Shared SDXL-style refiner (bigG only); do not modify it (copy first)."""
    return make_small_sdxl(3, refiner=True)


@pytest.fixture(scope="session")
def sdxl_file(small_sdxl: SmallSdxl, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small SDXL model written as a single .safetensors file (with comfyc metadata)."""
    from comfyc.compiler.models.single_file import save_single_file

    path = tmp_path_factory.mktemp("sdxl") / "small-sdxl.safetensors"
    return save_single_file(path, small_sdxl.unet, small_sdxl.vae, small_sdxl.text_encoder,
                            text_encoder_2=small_sdxl.text_encoder_2)


@pytest.fixture(scope="session")
def refiner_file(small_refiner: SmallSdxl, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small refiner written as a single .safetensors file."""
    from comfyc.compiler.models.single_file import save_single_file

    path = tmp_path_factory.mktemp("refiner") / "small-refiner.safetensors"
    return save_single_file(path, small_refiner.unet, small_refiner.vae, None,
                            text_encoder_2=small_refiner.text_encoder_2)


#: The SD3/Flux synthetic families and the diffusers class of each one's transformer.
FLOW_FAMILIES = ("sd3", "sd35_medium", "sd35_large", "flux_dev", "flux_schnell")


@pytest.fixture(scope="session")
def flow_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny all-in-one checkpoint of every SD3/Flux family (seed 0, float32, jittered norms
    and biases so that swapped tensors show)."""
    from comfyc.compiler.models.synthetic import write_checkpoint

    folder = tmp_path_factory.mktemp("flow")
    return {name: write_checkpoint(folder / f"{name}.safetensors", name, "tiny",
                                   dtype=torch.float32, jitter=0.05) for name in FLOW_FAMILIES}


@pytest.fixture(scope="session")
def flow_split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """ComfyUI models/ folders with the split files of the tiny SD3 and Flux dev (same weights
    as `flow_files`)."""
    from comfyc.compiler.models.synthetic import write_split_files

    root = tmp_path_factory.mktemp("models")
    return {name: write_split_files(root, name, "tiny", dtype=torch.float32, jitter=0.05)
            for name in ("sd3", "flux_dev")}


@pytest.fixture(scope="session")
def flow_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """diffusers folders of the tiny SD3 and Flux dev (same weights as `flow_files`)."""
    from comfyc.compiler.models.synthetic import write_checkpoint

    root = tmp_path_factory.mktemp("flow-folders")
    out = {}
    for name in ("sd3", "flux_dev"):
        write_checkpoint(root / f"{name}.safetensors", name, "tiny", dtype=torch.float32,
                         jitter=0.05, diffusers_dir=root / f"{name}-diffusers")
        out[name] = root / f"{name}-diffusers"
    return out
