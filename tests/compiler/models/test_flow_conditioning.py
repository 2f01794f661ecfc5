"""SD3 and Flux prompt encodings: diffusers' encode_prompt on the same weights, ComfyUI's token
weighting, chunking, missing encoders and CLIPSetLastLayer."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from comfyc.compiler.models.flow import load_flow_checkpoint  # noqa: E402
from comfyc.compiler.models.flow_conditioning import (  # noqa: E402
    ENCODER_RULES,
    encode_token_weights,
    flux_text_conditioning,
    sd3_text_conditioning,
    text_encoder_output,
)
from comfyc.compiler.models.text_encoders import TextEncoders  # noqa: E402

PROMPTS = ["a photo of a cat, golden hour", "", "A RED CAR ON A WET STREET AT NIGHT, 35mm"]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub access: diffusers/transformers must only read local files."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def sd3(flow_files: dict[str, Path]) -> Any:
    """The tiny SD3 checkpoint's modules."""
    return load_flow_checkpoint(flow_files["sd3"])


@pytest.fixture(scope="module")
def flux(flow_files: dict[str, Path]) -> Any:
    """The tiny Flux dev checkpoint's modules."""
    return load_flow_checkpoint(flow_files["flux_dev"])


def _ids(tokenizer: Any, text: str, length: int) -> torch.Tensor:
    return tokenizer(text, padding="max_length", max_length=length, truncation=True,
                     return_tensors="pt").input_ids


def test_sd3_matches_diffusers_encode_prompt(flow_folders: dict[str, Path], sd3: Any,
                                             offline: None) -> None:
    """sd3_text_conditioning on the pipeline's own token ids equals StableDiffusion3Pipeline.
    encode_prompt (T5 padded to ComfyUI's 77) on the same weights."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(flow_folders["sd3"]),
                                                    local_files_only=True)
    for prompt in PROMPTS:
        want, _, want_pooled, _ = pipe.encode_prompt(
            prompt, prompt, prompt, do_classifier_free_guidance=False, max_sequence_length=77)
        tokens = {"l": _ids(pipe.tokenizer, prompt, 77), "g": _ids(pipe.tokenizer_2, prompt, 77),
                  "t5xxl": _ids(pipe.tokenizer_3, prompt, 77)}
        context, pooled = sd3_text_conditioning(sd3.text_encoders, tokens)
        assert context.shape == want.shape == (1, 154, 256)
        assert torch.allclose(context, want, atol=1e-4, rtol=1e-4), prompt
        assert torch.allclose(pooled, want_pooled, atol=1e-5), prompt


def test_flux_matches_diffusers_encode_prompt(flow_folders: dict[str, Path], flux: Any,
                                              offline: None) -> None:
    """flux_text_conditioning equals FluxPipeline.encode_prompt with ComfyUI's 256 T5 tokens."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(flow_folders["flux_dev"]), local_files_only=True)
    for prompt in PROMPTS:
        want, want_pooled, _ = pipe.encode_prompt(prompt, prompt, max_sequence_length=256)
        tokens = {"l": _ids(pipe.tokenizer, prompt, 77),
                  "t5xxl": _ids(pipe.tokenizer_2, prompt, 256)}
        context, pooled = flux_text_conditioning(flux.text_encoders, tokens)
        assert context.shape == want.shape == (1, 256, 256)
        assert torch.allclose(context, want, atol=1e-4, rtol=1e-4), prompt
        assert torch.allclose(pooled, want_pooled, atol=1e-5), prompt


def test_runtime_tokenizers_give_the_pipeline_ids(flow_folders: dict[str, Path],
                                                  offline: None) -> None:
    """The lean runtime's CLIP and T5 tokenizers produce the ids the pipelines use."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    from comfyc.runtime.t5_tokenizer import T5Tokenizer
    from comfyc.runtime.tokenizer import ClipTokenizer

    folder = flow_folders["sd3"]
    clip_l = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    clip_g = CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2"))
    t5 = T5TokenizerFast.from_pretrained(str(folder / "tokenizer_3"))
    for prompt in PROMPTS:
        ids_l, _ = ClipTokenizer().to_arrays(ClipTokenizer().tokenize_weighted(prompt))
        ids_g, _ = ClipTokenizer(pad_token=0).to_arrays(
            ClipTokenizer(pad_token=0).tokenize_weighted(prompt))
        ids_t5, _ = T5Tokenizer(min_length=77).to_arrays(
            T5Tokenizer(min_length=77).tokenize_weighted(prompt))
        assert ids_l.tolist() == _ids(clip_l, prompt, 77).tolist()
        assert ids_g.tolist() == _ids(clip_g, prompt, 77).tolist()
        assert ids_t5.tolist() == _ids(t5, prompt, 77).tolist()


def test_token_weights_follow_comfyui(sd3: Any) -> None:
    """Weighted tokens become (z - z_empty) * w + z_empty against the empty prompt of the same
    length; unweighted tokens and the pooled output are unchanged."""
    encoder = sd3.text_encoders.t5xxl
    rule = ENCODER_RULES[("sd3", "t5xxl")]

    def run(ids: torch.Tensor) -> tuple[torch.Tensor, None]:
        return text_encoder_output(encoder.module, ids, rule)

    ids = [3, 9, 1131, 1712, 1] + [0] * 7
    weights = [1.0, 1.0, 1.5, 1.0, 1.0] + [1.0] * 7
    plain, _ = encode_token_weights(run, torch.tensor([ids]), rule)
    weighted, _ = encode_token_weights(run, [list(zip(ids, weights))], rule)
    # NOTE: a weighted prompt is encoded in one batch with the empty prompt, as ComfyUI does.
    # Whether a row's bits depend on the batch it is in is the CPU's matter (equal on AVX-512
    # EPYCs, up to ~1e-6 apart on AMX Xeons, in ComfyUI as here), so the unweighted tokens are
    # compared bit for bit with that same batch, and with the plain encoding within rounding.
    both, _ = run(torch.tensor([ids, [1] + [0] * 11]))
    assert torch.equal(weighted[0, :2], both[0, :2]) and torch.equal(weighted[0, 3:],
                                                                     both[0, 3:])
    assert torch.allclose(weighted[0, :2], plain[0, :2], atol=1e-5) and torch.allclose(
        weighted[0, 3:], plain[0, 3:], atol=1e-5)
    want = (both[0, 2] - both[1, 2]) * 1.5 + both[1, 2]
    assert torch.equal(weighted[0, 2], want)
    assert not torch.allclose(weighted[0, 2], plain[0, 2], atol=1e-3)
    clip_rule = ENCODER_RULES[("sd3", "clip_g")]
    module = sd3.text_encoders.clip_g.module
    chunk = [49406, 320, 2368, 49407] + [0] * 73
    _, pooled = encode_token_weights(lambda i: text_encoder_output(module, i, clip_rule),
                                     [[(t, 2.0 if k == 1 else 1.0) for k, t in
                                       enumerate(chunk)]], clip_rule)
    _, plain_pooled = text_encoder_output(module, torch.tensor([chunk]), clip_rule)
    assert torch.allclose(pooled, plain_pooled, atol=1e-5)  # NOTE: batch of 2 vs 1: ulps


def test_sd3_combination_rules(sd3: Any) -> None:
    """Chunked CLIP prompts, missing encoders (zero-filled as ComfyUI), the no-padding empty
    lists of CLIPTextEncodeSD3, and CLIPSetLastLayer."""
    encoders = sd3.text_encoders
    chunk_l = [49406, 320, 2368, 49407] + [49407] * 73
    chunk_g = [49406, 320, 2368, 49407] + [0] * 73
    t5 = [3, 9, 1712, 1] + [0] * 73
    tokens = {"l": torch.tensor([chunk_l, chunk_l]), "g": torch.tensor([chunk_g]),
              "t5xxl": torch.tensor([t5])}
    context, pooled = sd3_text_conditioning(encoders, tokens)
    assert context.shape == (1, 77 + 77, 256)  # CLIP cut to the shorter of L (154) and G (77)
    single, single_pooled = sd3_text_conditioning(
        encoders, {**tokens, "l": torch.tensor([chunk_l])})
    assert torch.equal(context, single) and torch.equal(pooled, single_pooled)
    assert torch.count_nonzero(context[0, :77, 192:]) == 0  # zero padding beyond L + G
    only_t5 = TextEncoders("sd3", t5xxl=encoders.t5xxl)
    t5_context, zeros = sd3_text_conditioning(only_t5, tokens)
    assert t5_context.shape == (1, 77, 256) and torch.equal(t5_context, context[:, 77:])
    assert zeros.shape == (1, 768 + 1280) and torch.count_nonzero(zeros) == 0
    only_g = TextEncoders("sd3", clip_g=encoders.clip_g)
    g_context, g_pooled = sd3_text_conditioning(only_g, tokens)
    assert g_context.shape == (1, 77, 4096)  # ComfyUI: 768 zero columns, then G, pad to 4096
    assert torch.count_nonzero(g_context[0, :, :768]) == 0
    assert torch.equal(g_context[0, :, 768:768 + 128], context[0, :77, 64:192])
    assert torch.equal(g_pooled[0, 768:], pooled[0, 64:])
    nothing = sd3_text_conditioning(TextEncoders("sd3"), tokens)
    assert nothing[0].shape == (1, 77, 4096) and nothing[1].shape == (1, 2048)
    empty_l = sd3_text_conditioning(encoders, {**tokens, "l": []})
    assert empty_l[0].shape == (1, 2 + 77, 256)  # L's empty prompt is 2 tokens; G is cut
    deeper, _ = sd3_text_conditioning(encoders, tokens, clip_layer=-1)
    assert not torch.equal(deeper, context)


def test_flux_needs_both_encoders(flux: Any) -> None:
    """Flux takes T5's sequence and CLIP-L's pooled output; both encoders are required."""
    with pytest.raises(Exception, match="clip_l and t5xxl"):
        flux_text_conditioning(TextEncoders("flux", t5xxl=flux.text_encoders.t5xxl),
                               {"t5xxl": torch.tensor([[1] + [0] * 255])})
    long_t5 = torch.tensor([[3] * 300 + [1]])
    context, pooled = flux_text_conditioning(
        flux.text_encoders, {"l": torch.tensor([[49406, 49407] + [49407] * 75]),
                             "t5xxl": long_t5})
    assert context.shape == (1, 301, 256) and pooled.shape == (1, 64)


def test_text_encoders_tokenize_and_encode(sd3: Any, flux: Any) -> None:
    """TextEncoders.tokenize builds ComfyUI's token dict with the runtime tokenizers (T5 padded
    to the type's minimum) and encode dispatches to the family's reference function."""
    tokens = sd3.text_encoders.tokenize("a (red:1.3) cat")
    assert set(tokens) == {"l", "g", "t5xxl"} and len(tokens["t5xxl"][0]) == 77
    assert tokens["g"][0][-1] == (0, 1.0) and tokens["l"][0][-1] == (49407, 1.0)
    assert any(w == pytest.approx(1.3) for _, w in tokens["t5xxl"][0])
    context, pooled = sd3.text_encoders.encode(tokens)
    want = sd3_text_conditioning(sd3.text_encoders, tokens)
    assert torch.equal(context, want[0]) and torch.equal(pooled, want[1])
    flux_tokens = flux.text_encoders.tokenize("a cat", t5_text="a red cat")
    assert set(flux_tokens) == {"l", "t5xxl"} and len(flux_tokens["t5xxl"][0]) == 256
    context, pooled = flux.text_encoders.encode(flux_tokens)
    assert context.shape == (1, 256, 256) and pooled.shape == (1, 64)
    short = flux.text_encoders.tokenize("a cat", t5_min_length=0)
    assert [t for t, _ in short["t5xxl"][0]] == [3, 9, 1712, 1]
    from comfyc.runtime.tokenizer import EmbeddingRef

    with pytest.raises(Exception, match="textual-inversion"):
        flux.text_encoders.encode({"l": short["l"], "t5xxl": [[(EmbeddingRef("x", 0), 1.0)]]})
