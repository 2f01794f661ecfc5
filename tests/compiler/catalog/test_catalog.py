"""The node catalogue: coverage of the issue's node list, ComfyUI's orders, object_info."""

from __future__ import annotations

from comfyc.compiler.catalog import SAMPLERS, SCHEDULERS, Catalog, default_catalog

REQUIRED = [
    "CheckpointLoaderSimple", "VAELoader", "LoraLoader", "LoraLoaderModelOnly", "CLIPSetLastLayer",
    "CLIPTextEncode", "ConditioningCombine", "ConditioningConcat", "ConditioningAverage",
    "ConditioningSetArea", "ConditioningSetAreaPercentage", "ConditioningSetAreaStrength",
    "ConditioningSetMask", "ConditioningSetTimestepRange", "ConditioningZeroOut",
    "EmptyLatentImage", "LatentUpscale", "LatentUpscaleBy", "LatentComposite", "LatentFromBatch",
    "RepeatLatentBatch", "SetLatentNoiseMask", "KSampler", "KSamplerAdvanced", "VAEDecode",
    "VAEEncode", "VAEEncodeForInpaint", "VAEDecodeTiled", "VAEEncodeTiled", "LoadImage",
    "LoadImageMask", "SaveImage", "PreviewImage", "ImageScale", "ImageScaleBy",
    "ImageScaleToTotalPixels", "ImageInvert", "ImageBatch", "ImagePadForOutpaint", "EmptyImage",
    "ControlNetLoader", "DiffControlNetLoader", "ControlNetApply", "ControlNetApplyAdvanced",
    "UpscaleModelLoader", "ImageUpscaleWithModel", "ModelSamplingDiscrete", "PrimitiveInt",
    "PrimitiveFloat", "PrimitiveString", "PrimitiveBoolean",
]


def test_every_required_node_is_catalogued() -> None:
    """The issue's node list is covered."""
    cat = default_catalog()
    assert [n for n in REQUIRED if n not in cat] == []


def test_sampler_and_scheduler_lists_in_comfyui_order() -> None:
    """Combos follow ComfyUI's order (first is the default)."""
    ks = default_catalog().get("KSampler")
    assert ks.input("sampler_name").choices == SAMPLERS and SAMPLERS[0] == "euler"
    assert ks.input("scheduler").choices == SCHEDULERS and SCHEDULERS[:3] == [
        "simple", "sgm_uniform", "karras"]
    assert SAMPLERS[-1] == "uni_pc_bh2"


def test_widget_layouts_have_control_and_upload_slots() -> None:
    """KSampler has a seed-control slot; LoadImage an upload slot."""
    cat = default_catalog()
    names = [s.input.name if s.input else s.kind
             for s in cat.get("KSamplerAdvanced").widget_layout()]
    assert names == ["add_noise", "noise_seed", "control", "steps", "cfg", "sampler_name",
                     "scheduler", "start_at_step", "end_at_step", "return_with_leftover_noise"]
    assert [s.kind for s in cat.get("LoadImage").widget_layout()] == ["value", "upload"]


def test_purity_flags() -> None:
    """Output nodes are effects; loaders are pure; LoadImage is not foldable."""
    cat = default_catalog()
    assert cat.get("SaveImage").output_node and not cat.get("SaveImage").pure
    assert cat.get("CheckpointLoaderSimple").pure and cat.get("KSampler").pure
    assert not cat.node_def("LoadImage").fold
    assert cat.node_def("ConditioningCombine").fold


def test_object_info_round_trip() -> None:
    """to_object_info → extend_from_object_info rebuilds the same inputs and outputs."""
    info = default_catalog().to_object_info(lambda folder: [f"{folder}-a.safetensors"])
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [
        "checkpoints-a.safetensors"]
    assert info["KSampler"]["input_order"]["required"][:3] == ["model", "seed", "steps"]
    rebuilt = Catalog([])
    rebuilt.extend_from_object_info(info)
    for schema in default_catalog():
        if schema.category == "comfyc/internal":
            assert schema.class_type not in info  # Never shown to ComfyUI clients.
            continue
        other = rebuilt.get(schema.class_type)
        assert other is not None
        assert other.input_names() == schema.input_names()
        assert other.output_types() == schema.output_types()
        assert [s.kind for s in other.widget_layout()] == [s.kind for s in schema.widget_layout()]
