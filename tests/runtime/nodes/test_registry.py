"""The node registry: every catalogued class has all its parts, or says why it cannot run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.nodes import RULES, compile_rule
from comfyc.runtime.nodes import FAMILIES, NodeDef, registry
from comfyc.runtime.nodes.schema import INTERNAL_CATEGORY

DEFS = list(registry())
_HANDLE_TYPES = {"MODEL", "CLIP", "VAE", "CONTROL_NET", "UPSCALE_MODEL"}


def test_every_catalogued_class_is_in_the_registry() -> None:
    """The built-in catalogue is exactly the registry's schemas."""
    catalog = default_catalog()
    assert [s.class_type for s in catalog] == [d.class_type for d in DEFS]
    for definition in DEFS:
        assert catalog.node_def(definition.class_type) is definition


@pytest.mark.parametrize("definition", DEFS, ids=lambda d: d.class_type)
def test_each_class_has_all_its_parts(definition: NodeDef) -> None:
    """An op (or a lowering rule), consistent facts — or a check-only reason for users."""
    schema = definition.schema
    names = {spec.name: spec for spec in schema.inputs}
    outputs = {out.name: out for out in schema.outputs}
    if definition.check_only is not None:
        assert len(definition.check_only) > 40 and "comfyc" in definition.check_only
        assert default_catalog().unrunnable_reason(definition.class_type) == \
            definition.check_only
    elif definition.lowered_to is not None:
        rule = compile_rule(definition.class_type)
        assert rule.lower is not None, "lowered_to needs a compile rule that lowers it"
        assert registry().op(definition.lowered_to) is not None or definition.lowered_to in \
            registry().program_ops
    else:
        assert callable(definition.run)
    for call in definition.calls:
        assert names[call.via].type in _HANDLE_TYPES
    for output, input_name in definition.weights_from:
        assert outputs[output].type == names[input_name].type
    if definition.seed_input is not None:
        assert names[definition.seed_input].type == "INT"
    if definition.fold:
        assert definition.run is not None and schema.pure
    assert schema.display_name and (schema.category or schema.class_type)
    if schema.category == INTERNAL_CATEGORY:
        assert definition.class_type not in default_catalog().to_object_info()


def test_compile_rules_belong_to_registered_classes() -> None:
    """No rule for a class the registry does not define (a typo would silently do nothing)."""
    assert set(RULES) <= {d.class_type for d in DEFS}
    for class_type, rule in RULES.items():
        schema = registry().get(class_type).schema  # type: ignore[union-attr]
        for side in rule.lora_sides:
            assert schema.input(side.input) is not None and schema.input(side.strength)
            assert side.output in {o.name for o in schema.outputs}
        if rule.clip_layer_input is not None:
            assert schema.input(rule.clip_layer_input) is not None


def test_families_define_disjoint_classes() -> None:
    """Every class is defined in exactly one family module."""
    seen: dict[str, str] = {}
    for family in FAMILIES:
        for definition in family.NODES:
            assert definition.class_type not in seen, (definition.class_type, seen)
            seen[definition.class_type] = family.__name__
    assert len(seen) == len(DEFS)


def test_an_unrunnable_class_names_its_reason_to_users(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A workflow with a class comfyc has no implementation of (every built-in class runs
    today: here one an object_info file adds) fails before any work, saying so."""
    from comfyc.compiler.errors import WorkflowErrors
    from comfyc.compiler.lowering.program import lower_to_program
    from comfyc.frontends.dsl import parse_dsl
    from tests.conftest import DATA

    catalog = default_catalog().copy()
    catalog.load_object_info(DATA / "comfy" / "object_info_extra.json")
    graph = parse_dsl('c = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")\n'
                      'm = ModelMergeSimple(model1=c.MODEL, model2=c.MODEL, ratio=0.5)\n'
                      'output m\n', "t.cfy", catalog)
    with pytest.raises(WorkflowErrors) as info:
        lower_to_program(graph)
    message = str(info.value)
    assert "#2 (ModelMergeSimple) cannot run" in message, message
    assert "no implementation of ModelMergeSimple" in message, message


def test_registry_loads_without_the_compiler_numpy_or_torch() -> None:
    """The runtime half imports nothing heavy: `comfyc check` and the lean runtime load it."""
    script = textwrap.dedent("""
        import sys
        from comfyc.runtime.nodes import registry
        assert len(registry()) > 50
        heavy = [m for m in ("numpy", "torch", "comfyc.compiler", "comfyc.frontends")
                 if m in sys.modules]
        assert not heavy, heavy
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
