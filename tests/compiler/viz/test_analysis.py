"""What the graph page says the compiler does: node fates, stages, artifact timings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from comfyc.cli.commands.viz import build_view
from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.viz import view_of_graph
from comfyc.frontends.dsl import parse_dsl
from tests.compiler.viz.manifests import DECODER, TEXT, UNET, write_artifact
from tests.conftest import REPO

EXAMPLES = REPO / "examples"

_SAMPLER = """\
latent = EmptyLatentImage(width=64, height=64, batch_size=1)
sampler = KSampler(model={model}, seed=1, steps=4, cfg=5.0, sampler_name="euler",
                   scheduler="normal", positive=positive, negative=negative,
                   latent_image=latent, denoise=1.0)
image = VAEDecode(samples=sampler, vae={vae})
SaveImage(images=image, filename_prefix="t")
"""

#: Every kind of fate: a merged twin loader, an identity LoRA, a dead node, a folded prompt.
FATES = """\
param prompt: STRING = "a handwritten digit seven"
ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")
twin = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")
lora = LoraLoader(model=ckpt.MODEL, clip=ckpt.CLIP, lora_name="tiny-digits-lora.safetensors",
                  strength_model=0.0, strength_clip=0.0)
positive = CLIPTextEncode(text=prompt, clip=lora.CLIP)
negative = CLIPTextEncode(text="", clip=twin.CLIP)
unused = CLIPTextEncode(text="never used", clip=ckpt.CLIP)
""" + _SAMPLER.format(model="lora.MODEL", vae="twin.VAE")


def _view(text: str, **options: object):  # type: ignore[no-untyped-def]
    graph = parse_dsl(text, "t.cfy", default_catalog())
    return view_of_graph(graph, **options)  # type: ignore[arg-type]


def test_each_fate_is_named() -> None:
    """DCE, CSE, an identity LoRA and folding each give their status and a reason."""
    view = _view(FATES)
    fates = {n.id: (n.status, n.note) for n in view.nodes.values()}
    assert fates["2"] == ("merged", "merged into #1 (identical)")
    assert fates["3"] == ("eliminated", "LoRA at strength 0 is an identity")
    assert fates["5"] == ("folded", "CLIPTextEncode → constant conditioning")
    assert fates["6"] == ("eliminated", "no output depends on it")
    assert fates["4"][0] == fates["8"][0] == "kept"
    assert view.stats == {"nodes_before": 10, "nodes_after": 7, "eliminated": 2, "merged": 1,
                          "folded": 1, "lora_merged": 0, "lora_runtime": 0, "new_params": 1,
                          "schedules": 1}


def test_after_edges_follow_the_rewrites() -> None:
    """The twin's VAE edge is drawn before only; the kept loader feeds the decoder after."""
    view = _view(FATES)
    edges = {(e.src, e.dst, e.dst_input): e.view for e in view.edges}
    assert edges[("2", "9", "vae")] == "before"
    assert edges[("1", "9", "vae")] == "after"
    assert edges[("1", "8", "model")] == "after"  # The identity LoRA is gone.
    assert ("2", "5", "clip") in edges and edges[("2", "5", "clip")] == "before"


def test_stages_group_their_callers() -> None:
    """Sampler → unet, unfolded prompt → text_encoder, VAEDecode → vae_decoder."""
    view = _view(FATES, backend={"unet": "ort-cuda"})
    stages = {s.kind: s for s in view.stages.values()}
    assert sorted(stages) == ["text_encoder", "unet", "vae_decoder"]
    assert stages["unet"].members == ["8"] and stages["unet"].backend == "ort-cuda"
    assert stages["text_encoder"].members == ["4"]
    assert stages["vae_decoder"].members == ["9"]
    assert stages["vae_decoder"].label == "vae_decoder · ort-cpu"
    assert view.nodes["5"].stage is None  # Folded: it calls nothing at run time.


def test_a_lora_model_is_its_own_unet_stage() -> None:
    """Two samplers on the plain and the LoRA-merged model call two UNet stages."""
    text = """\
ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")
lora = LoraLoader(model=ckpt.MODEL, clip=ckpt.CLIP, lora_name="tiny-digits-lora.safetensors",
                  strength_model=0.8, strength_clip=0.0)
positive = CLIPTextEncode(text="a handwritten digit one", clip=ckpt.CLIP)
negative = CLIPTextEncode(text="", clip=ckpt.CLIP)
""" + _SAMPLER.format(model="ckpt.MODEL", vae="ckpt.VAE") + """\
second = KSampler(model=lora.MODEL, seed=1, steps=4, cfg=5.0, sampler_name="euler",
                  scheduler="normal", positive=positive, negative=negative,
                  latent_image=latent, denoise=1.0)
decoded = VAEDecode(samples=second, vae=ckpt.VAE)
SaveImage(images=decoded, filename_prefix="u")
"""
    view = _view(text)
    unets = [s for s in view.stages.values() if s.kind == "unet"]
    assert [s.name for s in unets] == ["unet", "unet #2"]
    assert [s.label for s in unets] == ["unet · ort-cpu", "unet #2 · ort-cpu"]
    assert "LoRA tiny-digits-lora.safetensors" in unets[1].detail
    assert view.nodes["2"].status == "folded"  # The LoRA is merged into the weights.
    decoders = [s for s in view.stages.values() if s.kind == "vae_decoder"]
    assert len(decoders) == 1 and len(decoders[0].members) == 2


def test_nested_folds_name_their_consumer() -> None:
    """area.cfy: a prompt folded into an area condition says which constant holds it."""
    view = build_view(EXAMPLES / "area.cfy")
    left = view.nodes["3"]
    assert left.status == "folded" and not left.in_after
    assert left.note == "CLIPTextEncode → folded into #4's constant"
    assert view.nodes["8"].in_after and view.nodes["8"].status == "folded"
    assert [s.kind for s in view.stages.values()] == ["unet", "vae_decoder"]


@pytest.mark.parametrize("source,found", [("file", "txt2img.cfy"), ("text", "manifest"),
                                          ("none", None)])
def test_artifact_stages_backends_and_timings(tmp_path: Path, source: str,
                                              found: str | None) -> None:
    """Stages come from the program, backends from the plan, times from the autotuner."""
    view = build_view(write_artifact(tmp_path, source=source))
    assert view.kind == "artifact"
    labels = {key: s.label for key, s in view.stages.items()}
    assert labels == {TEXT: "text_encoder · ort-cpu", UNET: "unet · ort-cuda · 12.3 ms",
                      DECODER: "vae_decoder · torch"}
    assert view.stages[UNET].members == ["5"]
    assert "ort-cpu 39.5 ms" in view.stages[UNET].detail
    assert "ExportError" in view.stages[DECODER].detail
    assert view.extra["machine"] == "cpu: test cpu, gpu: test gpu"
    assert view.nodes["3"].status == "folded"
    assert "sigma schedule precomputed" in view.nodes["5"].tags
    if found is None:
        assert "does not hold its source" in view.notes[0]
        assert view.nodes["3"].note == "constant conditioning"
    else:
        assert found in view.notes[0]
        assert view.nodes["3"].note == "CLIPTextEncode → constant conditioning"
        assert view.nodes["3"].class_type == "CLIPTextEncode"


def test_artifact_without_autotune_has_no_times(tmp_path: Path) -> None:
    """No measurements: labels carry the backend only."""
    view = build_view(write_artifact(tmp_path, autotune=False))
    assert all(s.median_ms is None for s in view.stages.values())
    assert view.stages[UNET].label == "unet · ort-cuda"


def test_drawing_needs_no_torch() -> None:
    """Building and drawing a view imports neither torch nor any model code."""
    code = ("import sys\n"
            "from comfyc.cli.commands.viz import build_view\n"
            "from comfyc.compiler.viz import render\n"
            f"render(build_view({str(EXAMPLES / 'hires_lora.cfy')!r}), 'html')\n"
            "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def test_a_literal_that_became_a_param_has_a_row_per_view() -> None:
    """The seed row shows the literal before and the param after, in one line of the box."""
    from comfyc.compiler.viz.layout import widget_slots

    node = _view(FATES).nodes["8"]
    rows = [(r.name, r.text, r.view) for r in node.widgets]
    at = rows.index(("seed", "1", "before"))
    assert rows[at + 1] == ("seed", "param seed = 1", "after")
    assert widget_slots(node) == len(rows) - 1
