"""TensorRT lowering on the CPU: profiles, engine keys and cache lookup, ONNX checks and
preparation, fp16 stages, and the errors where TensorRT or a GPU is missing.

The engine build and the ``trt`` backend themselves need an NVIDIA GPU with TensorRT; their
test is marked ``gpu`` and skipped elsewhere (bench/gpu_trt_check.py runs them on a GPU box).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.compiler.lowering.tensorrt import (
    UNSUPPORTED_OPS,
    ProfileSpec,
    ShapeRange,
    TensorRTError,
    check_onnx,
    onnx_stages,
    prepare_onnx,
    stage_profile,
)
from comfyc.frontends.dsl import parse_dsl
from comfyc.runtime.artifact import file_sha256, read_manifest
from comfyc.runtime.backends.base import BackendError
from comfyc.runtime.backends.trt import (
    ENGINE_DIR,
    EngineKey,
    GpuIdentity,
    find_engine,
    require_tensorrt,
    tensorrt_version,
)

HAS_TRT = tensorrt_version() is not None

WORKFLOW = """
param seed: INT = 5
param prompt: STRING = "a handwritten digit four"
ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")
pos = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)
neg = CLIPTextEncode(text="", clip=ckpt.CLIP)
latent = EmptyLatentImage(width=64, height=64, batch_size=1)
s = KSampler(model=ckpt.MODEL, seed=seed, steps=2, cfg=5.0, sampler_name="euler",
             scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
image = VAEDecode(samples=s, vae=ckpt.VAE)
SaveImage(images=image, filename_prefix="trt")
"""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's txt2img compiled once for the trt backend (what ``comfyc compile
    --backend trt --no-engines`` writes): static UNet/VAE, dynamic-batch CLIP, standard ONNX
    stages (no onnxruntime offline fusions)."""
    out = tmp_path_factory.mktemp("trt") / "t2i.comfyc"
    compile_graph(parse_dsl(textwrap.dedent(WORKFLOW), "t.cfy", default_catalog()), out,
                  CompileOptions(backend="trt"))
    return out


def _stage(artifact: Path, kind: str) -> tuple[str, dict]:
    stages = onnx_stages(read_manifest(artifact))
    return next((n, e) for n, e in stages.items() if e["kind"] == kind)


# ------------------------------------------------------------------------ profiles
def test_profile_spec_parses_ranges_and_single_values() -> None:
    spec = ProfileSpec.parse("batch=1:2:4, height=512:768:1024,width=512,context=77:77:154")
    assert spec.batch == (1, 2, 4)
    assert spec.height == (512, 768, 1024)
    assert spec.width == (512, 512, 512)
    assert spec.context == (77, 77, 154)
    assert ProfileSpec.parse(None).empty and ProfileSpec.parse("").empty


@pytest.mark.parametrize("text, message", [
    ("depth=1:2:3", "expected batch=, height=, width= or context="),
    ("batch=4:2:1", "need 1 <= MIN <= OPT <= MAX"),
    ("batch=1:2", "expected MIN:OPT:MAX"),
    ("batch=one", "expected integers MIN:OPT:MAX"),
    ("height=500:512:512", "image sizes must be multiples of 8"),
    ("context=70:77:77", "token counts are multiples of 77"),
    ("batch", "expected batch=, height="),
])
def test_profile_spec_errors(text: str, message: str) -> None:
    with pytest.raises(TensorRTError, match=message.replace("(", r"\(")):
        ProfileSpec.parse(text)


def test_shape_range_validates_order_and_rank() -> None:
    assert ShapeRange((1, 4), (1, 4), (1, 4)).static
    assert not ShapeRange((1, 4), (2, 4), (4, 4)).static
    with pytest.raises(TensorRTError, match="1 <= min <= opt <= max"):
        ShapeRange((2,), (1,), (4,))
    with pytest.raises(TensorRTError, match="ranks differ"):
        ShapeRange((1,), (1, 2), (1, 2))


def test_static_stage_profile_is_its_shapes(artifact: Path) -> None:
    name, entry = _stage(artifact, "unet")
    profile = stage_profile(entry)
    assert profile == {
        "sample": ShapeRange((2, 4, 8, 8), (2, 4, 8, 8), (2, 4, 8, 8)),
        "timestep": ShapeRange((2,), (2,), (2,)),
        "encoder_hidden_states": ShapeRange((2, 77, 64), (2, 77, 64), (2, 77, 64)),
    }
    assert all(r.static for r in profile.values())
    with pytest.raises(TensorRTError, match="static shapes .*compile with --dynamic"):
        stage_profile(entry, ProfileSpec.parse("batch=1:1:2"))


def test_dynamic_batch_text_encoder_gets_a_range(artifact: Path) -> None:
    _, entry = _stage(artifact, "text_encoder")
    # embeds: textual-inversion vectors beside the ids (same batch range).
    assert stage_profile(entry) == {"input_ids": ShapeRange((1, 77), (1, 77), (2, 77)),
                                    "embeds": ShapeRange((1, 77, 64), (1, 77, 64), (2, 77, 64))}
    spec = ProfileSpec.parse("batch=1:2:8")
    assert stage_profile(entry, spec) == {
        "input_ids": ShapeRange((1, 77), (2, 77), (8, 77)),
        "embeds": ShapeRange((1, 77, 64), (2, 77, 64), (8, 77, 64))}


def test_dynamic_unet_profile_scales_images_to_latents_and_doubles_batch() -> None:
    """A --dynamic UNet: image pixels become latent sizes; cond+uncond double the batch."""
    entry = {"kind": "unet", "shapes": [[[2, 4, 64, 64], [2], [2, 77, 768]]],
             "facts": {"inputs": [
                 {"name": "sample", "shape": ["batch", 4, "height", "width"]},
                 {"name": "timestep", "shape": ["batch"]},
                 {"name": "encoder_hidden_states", "shape": ["batch", "context_len", 768]}]}}
    spec = ProfileSpec.parse("batch=1:1:4,height=512:512:768,width=512:640:1024")
    profile = stage_profile(entry, spec)
    assert profile["sample"] == ShapeRange((1, 4, 64, 64), (2, 4, 64, 80), (8, 4, 96, 128))
    assert profile["timestep"] == ShapeRange((1,), (2,), (8,))
    assert profile["encoder_hidden_states"] == ShapeRange(
        (1, 77, 768), (2, 77, 768), (8, 231, 768))
    # Without a spec the workflow's own shapes are the optimum, with headroom above.
    default = stage_profile(entry)
    assert default["sample"] == ShapeRange((1, 4, 1, 1), (2, 4, 64, 64), (4, 4, 128, 128))


def test_vae_decoder_image_dims_follow_the_spec_in_pixels() -> None:
    entry = {"kind": "vae_decoder", "shapes": [[[1, 4, 64, 64]]],
             "facts": {"inputs": [{"name": "latent", "shape": ["batch", 4, "height", "width"]}]}}
    profile = stage_profile(entry, ProfileSpec.parse("height=256:512:1024,width=512"))
    assert profile["latent"] == ShapeRange((1, 4, 32, 64), (1, 4, 64, 64), (2, 4, 128, 64))


def test_entry_without_facts_is_refused() -> None:
    with pytest.raises(TensorRTError, match="no input shapes"):
        stage_profile({"kind": "unet", "shapes": []})


# ------------------------------------------------------------------------ engine keys
H100 = GpuIdentity("NVIDIA H100 80GB HBM3", "9.0")
A100 = GpuIdentity("NVIDIA A100-SXM4-80GB", "8.0")
PROFILE = {"sample": [[2, 4, 8, 8]] * 3}


def _key(**change: object) -> EngineKey:
    args = {"gpu": H100, "tensorrt": "10.5.0", "onnx_sha256": "ab" * 32, "fp16": True,
            "refittable": False, "profile": PROFILE}
    args.update(change)
    gpu, version, sha = args.pop("gpu"), args.pop("tensorrt"), args.pop("onnx_sha256")
    return EngineKey.make(gpu, version, sha, **args)  # type: ignore[arg-type]


def test_engine_key_digest_is_stable_and_changes_with_every_field() -> None:
    base = _key()
    assert base.digest() == _key().digest() and len(base.digest()) == 16
    variants = [_key(gpu=A100), _key(tensorrt="10.6.0"), _key(onnx_sha256="cd" * 32),
                _key(fp16=False), _key(refittable=True),
                _key(profile={"sample": [[1, 4, 8, 8], [2, 4, 8, 8], [4, 4, 8, 8]]})]
    digests = {v.digest() for v in variants}
    assert base.digest() not in digests and len(digests) == len(variants)
    assert EngineKey.from_json(json.loads(json.dumps(base.__dict__))) == base


def test_engine_key_profile_is_normalised() -> None:
    a = EngineKey.make(H100, "10", "x", fp16=True, refittable=False,
                       profile={"b": [(1,), (1,), (1,)], "a": [[2], [2], [2]]})
    b = EngineKey.make(H100, "10", "x", fp16=True, refittable=False,
                       profile={"a": [[2], [2], [2]], "b": [[1], [1], [1]]})
    assert a == b


def test_engine_key_differences_say_why() -> None:
    reasons = _key().differences(_key(gpu=A100, tensorrt="10.3.0", onnx_sha256="0" * 64))
    assert reasons == [
        "it was built for NVIDIA A100-SXM4-80GB (compute 8.0); this is NVIDIA H100 80GB HBM3 "
        "(compute 9.0)",
        "it was built with TensorRT 10.3.0; this is TensorRT 10.5.0",
        "the stage's ONNX file changed since it was built",
    ]
    assert _key().machine_matches(_key(onnx_sha256="1" * 64))
    assert not _key().machine_matches(_key(gpu=A100))


def _index(root: Path, stage: str, key: EngineKey, content: bytes = b"plan",
           sha: str | None = None) -> Path:
    folder = root / ENGINE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / f"{stage}.{key.digest()}.plan"
    plan.write_bytes(content)
    entry = {"file": plan.name, "key": key.__dict__, "sha256": sha or file_sha256(plan)}
    (folder / "index.json").write_text(json.dumps({"format": 1, "engines": {stage: [entry]}}))
    return plan


def test_find_engine_matches_exact_key_only(tmp_path: Path) -> None:
    plan = _index(tmp_path, "unet", _key())
    assert find_engine(tmp_path, "unet", _key()) == (plan, [])
    path, reasons = find_engine(tmp_path, "unet", _key(gpu=A100, tensorrt="10.6.0"))
    assert path is None
    assert reasons[0].startswith("it was built for NVIDIA H100 80GB HBM3 (compute 9.0); "
                                 "this is NVIDIA A100")
    assert "it was built with TensorRT 10.5.0; this is TensorRT 10.6.0" in reasons
    assert find_engine(tmp_path, "vae_decoder", _key()) == (None, ["no engine was built for it"])


def test_find_engine_rejects_changed_or_missing_files(tmp_path: Path) -> None:
    plan = _index(tmp_path, "unet", _key(), sha="0" * 64)
    assert find_engine(tmp_path, "unet", _key()) == (
        None, [f"its file {plan.name} does not match its recorded hash"])
    plan.unlink()
    assert find_engine(tmp_path, "unet", _key()) == (None, [f"its file {plan.name} is missing"])


def test_engine_index_with_unknown_format_is_an_error(tmp_path: Path) -> None:
    (tmp_path / ENGINE_DIR).mkdir()
    (tmp_path / ENGINE_DIR / "index.json").write_text('{"format": 99}')
    with pytest.raises(BackendError, match="format 99 is not 1"):
        find_engine(tmp_path, "unet", _key())


# --------------------------------------------------------------------------- ONNX
def test_compiled_stages_pass_the_tensorrt_checks(artifact: Path) -> None:
    stages = onnx_stages(read_manifest(artifact))
    assert {e["kind"] for e in stages.values()} == {"unet", "text_encoder", "vae_decoder"}
    for name, entry in stages.items():
        assert check_onnx(artifact / entry["file"]) == [], name


def _tiny_model(path: Path, op: str = "Relu", opset: int = 18, domain: str = "",
                input_type: int = onnx.TensorProto.FLOAT) -> Path:
    from onnx import helper

    x = helper.make_tensor_value_info("x", input_type, [2, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    node = helper.make_node(op, ["x"], ["y"], domain=domain)
    imports = [helper.make_opsetid("", opset)]
    if domain:
        imports.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=imports)
    onnx.save(model, str(path))
    return path


def test_check_onnx_finds_what_tensorrt_refuses(tmp_path: Path) -> None:
    assert check_onnx(_tiny_model(tmp_path / "ok.onnx")) == []
    assert "Unique" in UNSUPPORTED_OPS
    problems = check_onnx(_tiny_model(tmp_path / "u.onnx", op="Unique"))
    assert "operator Unique (1 nodes) is not supported by TensorRT's ONNX parser" in problems
    problems = check_onnx(_tiny_model(tmp_path / "o.onnx", opset=8))
    assert any("opset 8 is outside TensorRT's 9-20" in p for p in problems)
    problems = check_onnx(_tiny_model(tmp_path / "c.onnx", op="MyOp", domain="my.ops"))
    assert ("operator my.ops.MyOp (1 nodes) is not an ONNX standard operator: custom domain "
            "'my.ops' needs a TensorRT plugin") in problems
    problems = check_onnx(_tiny_model(tmp_path / "f.onnx", op="QuickGelu",
                                      domain="com.microsoft"))
    assert len(problems) == 1 and problems[0].startswith(
        "onnxruntime-only fused operators: com.microsoft.QuickGelu (1). The stage was saved "
        "with onnxruntime's offline optimisations; compile with --backend trt")
    problems = check_onnx(_tiny_model(tmp_path / "s.onnx", op="Identity",
                                      input_type=onnx.TensorProto.STRING))
    assert "x: string tensors cannot run in TensorRT" in problems


def test_prepared_onnx_computes_the_same(artifact: Path, tmp_path: Path) -> None:
    """polygraphy's folding and shape inference keep the UNet's outputs (ORT, CPU)."""
    _, entry = _stage(artifact, "unet")
    source = artifact / entry["file"]
    counts = prepare_onnx(source, tmp_path / "unet.onnx")
    assert counts["nodes_after"] <= counts["nodes_before"]
    assert check_onnx(tmp_path / "unet.onnx") == []
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
             "timestep": np.array([999.0, 999.0], np.float32),
             "encoder_hidden_states": rng.standard_normal((2, 77, 64), dtype=np.float32)}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    a = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(tmp_path / "unet.onnx"), options,
                             providers=["CPUExecutionProvider"])
    (want,), (got,) = a.run(None, feeds), b.run(None, feeds)
    assert np.abs(want - got).max() < 1e-4


def test_fp16_stage_passes_the_checks(tmp_path: Path) -> None:
    """An fp16 export (what GPU engines may be built from) is TensorRT-ready too."""
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKL

    from comfyc.compiler.lowering.onnx_export import export_vae_decoder

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",)).eval()
    facts = export_vae_decoder(vae, tmp_path / "vae16.onnx", batch=1, height=8, width=8,
                               fp16=True)
    assert facts["weights_dtype"] == "float16"
    assert check_onnx(facts["path"]) == []
    model = onnx.load(facts["path"])
    assert onnx.TensorProto.FLOAT16 in {t.data_type for t in model.graph.initializer}
    entry = {"kind": "vae_decoder", "facts": facts, "shapes": [[[1, 4, 8, 8]]]}
    assert stage_profile(entry)["latent"].static


# ------------------------------------------------------------------ missing TensorRT
@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_require_tensorrt_names_the_package_and_extra() -> None:
    """The package, the extra, and only backends this onnxruntime build can run."""
    with pytest.raises(BackendError) as info:
        require_tensorrt()
    message = str(info.value)
    assert "'tensorrt'" in message and "pip install 'comfyc[tensorrt]'" in message
    assert "--backend" in message and message.endswith("ort-cpu")
    providers = ort.get_available_providers()
    assert ("ort-cuda" in message) == ("CUDAExecutionProvider" in providers)
    assert ("ort-trt" in message) == ("TensorrtExecutionProvider" in providers)


def _comfyc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "comfyc.cli.main", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_cli_without_tensorrt_fails_clearly(artifact: Path) -> None:
    """build-engines and run --backend trt: exit 2 (what this machine lacks, like an extra),
    the extra to install, and a backend that runs here - not GPU providers that would fail
    just the same (issue #18)."""
    result = _comfyc("build-engines", str(artifact))
    assert result.returncode == 2, result.stderr
    assert "pip install 'comfyc[tensorrt]'" in result.stderr
    assert "--backend ort-cpu" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (artifact / ENGINE_DIR).exists()
    result = _comfyc("run", str(artifact), "--backend", "trt", "--output",
                     str(artifact.parent / "out"))
    assert result.returncode == 2, result.stderr
    assert "pip install 'comfyc[tensorrt]'" in result.stderr
    assert "--backend ort-cpu" in result.stderr
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "ort-cuda" not in result.stderr and "or torch" not in result.stderr
    assert "Traceback" not in result.stderr
    assert not (artifact.parent / "out").exists()


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_compile_for_trt_without_tensorrt_fails_before_any_work(tmp_path: Path) -> None:
    source = tmp_path / "t.cfy"
    source.write_text(textwrap.dedent(WORKFLOW))
    out = tmp_path / "t.comfyc"
    result = _comfyc("compile", str(source), "--backend", "unet=trt", "-o", str(out))
    assert result.returncode == 2
    assert "pip install 'comfyc[tensorrt]'" in result.stderr
    assert "add --no-engines" in result.stderr and "comfyc build-engines" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [source]


def test_trt_plan_keeps_standard_onnx(artifact: Path) -> None:
    manifest = read_manifest(artifact)
    assert set(manifest.plan.values()) == {"trt"}
    for name, entry in onnx_stages(manifest).items():
        assert entry.get("optimized") is False, name


def test_cli_check_prints_profiles_without_a_gpu(artifact: Path) -> None:
    result = _comfyc("build-engines", str(artifact), "--check", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    unet = next(v for k, v in report.items() if k.startswith("unet"))
    assert unet["problems"] == []
    assert unet["profile"]["sample"] == [[2, 4, 8, 8]] * 3
    result = _comfyc("build-engines", str(artifact), "--check", "--profile", "batch=1:1:2")
    assert result.returncode == 1
    assert "static shapes" in result.stderr and "--dynamic" in result.stderr


# ------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT and an NVIDIA GPU")
def test_engines_build_and_match_onnxruntime(artifact: Path) -> None:  # pragma: no cover
    from comfyc.compiler.lowering.tensorrt import BuildOptions, build_engines
    from comfyc.runtime import load

    results = build_engines(artifact, BuildOptions(fp16=False))
    assert {r["status"] for r in results.values()} == {"built"}
    again = build_engines(artifact, BuildOptions(fp16=False))
    assert {r["status"] for r in again.values()} == {"cached"}
    want = load(artifact, backend="ort-cpu").run({"seed": 3}, save=False).images
    got = load(artifact, backend="trt").run({"seed": 3}, save=False).images
    for key in want:
        assert np.abs(want[key].astype(np.float32) - got[key].astype(np.float32)).max() <= 8
