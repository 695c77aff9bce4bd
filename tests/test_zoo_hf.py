"""Specs for Hugging Face models as users hold them: traced without a wrapper, sound,
recoverable, with the frozen outputs measured (issue 11).

No wrapper: modeconnect calls each model through ``model_call`` (input ids by name,
``use_cache=False``, decoder inputs for T5, logits out); CLIP's towers are compared on
their embeddings (:data:`zoo_hf.CALLS`). All tensors are randomised first. One model
per family runs by default; the rest are marked ``slow``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from zoo import derived_specs, recovered, soundness  # noqa: E402
from zoo_hf import CALLS, HF  # noqa: E402

from modeconnect.spec import Coverage, derive_spec  # noqa: E402

FROZEN_OUTPUTS = {  # weight matrices whose output axis stays fixed, and why
    "hf_llama_gqa": {"lm_head.weight": "model output"},
    "hf_llama_mha": {"model.embed_tokens.weight": "vocabulary axis of an embedding"},  # tied head
    "hf_mistral": {"lm_head.weight": "model output"},
    "hf_qwen2": {"lm_head.weight": "model output"},
    "hf_gpt_neox": {"lm_head.weight": "model output"},
    "hf_opt": {"model.decoder.embed_tokens.weight": "vocabulary axis of an embedding"},  # tied head
    "hf_gpt2": {"transformer.wte.weight": "vocabulary axis of an embedding"},  # tied head
    "hf_falcon": {
        "transformer.word_embeddings.weight": "vocabulary axis of an embedding"
    },  # tied head
    "hf_bert": {"classifier.weight": "model output"},
    "hf_t5_sdpa": {"shared.weight": "vocabulary axis of an embedding"},  # tied head
    "hf_t5_eager": {"shared.weight": "vocabulary axis of an embedding"},  # tied head
    "hf_vit": {"classifier.weight": "model output"},
    "hf_clip_text": {"text_projection.weight": "model output"},
    "hf_clip_vision": {"visual_projection.weight": "model output"},
    "hf_clip": {},
}
GROUPS = {
    "hf_llama_gqa": 9, "hf_llama_mha": 7, "hf_mistral": 9, "hf_qwen2": 9, "hf_gpt_neox": 9,
    "hf_opt": 9, "hf_gpt2": 9, "hf_falcon": 5, "hf_bert": 10, "hf_t5_sdpa": 20,
    "hf_t5_eager": 20, "hf_vit": 9, "hf_clip_text": 9, "hf_clip_vision": 9, "hf_clip": 19,
}  # fmt: skip
DEFAULT = {"hf_llama_gqa", "hf_gpt_neox", "hf_bert", "hf_t5_sdpa", "hf_vit", "hf_clip_text"}
NAMES = [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in HF]


@pytest.fixture(scope="module")
def derived():
    return derived_specs(HF, CALLS)


@pytest.mark.parametrize("name", NAMES)
def test_random_permutations_keep_the_function(derived, name):
    model, inputs, call, spec = derived(name)
    assert len(spec.groups) == GROUPS[name]
    for seed in (1, 2):
        assert soundness(model, inputs, spec, seed, call) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_weight_matching_recovers_a_permuted_copy(derived, name):
    model, _, _, spec = derived(name)
    assert recovered(spec, model.state_dict()) == []


@pytest.mark.parametrize("name", NAMES)
def test_frozen_outputs(derived, name):
    _, _, _, spec = derived(name)
    coverage = Coverage.of(spec)
    assert dict(coverage.frozen_outputs) == FROZEN_OUTPUTS[name]
    assert not any(r.startswith("unsupported op") for r in coverage.reasons), coverage.reasons


def test_t5_position_bias_permutes_with_the_heads_under_sdpa(derived):
    """The relative position bias reaches SDPA as ``attn_mask``; its head axis must join the
    heads group (it was fixed as "attention mask", and a random permutation changed the
    outputs by 0.43 relative)."""
    _, _, _, spec = derived("hf_t5_sdpa")
    key = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    heads = spec.layouts[key][1]
    q = spec.layouts["encoder.block.0.layer.0.SelfAttention.q.weight"][0]
    assert heads.group == q.factors[0].group  # type: ignore[union-attr]


def test_grouped_query_value_dims_are_per_key_value_head(derived):
    _, _, _, spec = derived("hf_llama_gqa")
    v = spec.layouts["model.layers.0.self_attn.v_proj.weight"][0]
    o = spec.layouts["model.layers.0.self_attn.o_proj.weight"][1]
    kv_heads, value_dims = v.factors  # type: ignore[union-attr]
    assert value_dims.over == kv_heads.group
    assert spec.groups[value_dims.group].batch_over == kv_heads.group
    assert [f.group for f in o.factors][::2] == [kv_heads.group, value_dims.group]  # type: ignore[union-attr]


def test_partial_rotary_keeps_per_head_pass_through_dims(derived):
    _, _, _, spec = derived("hf_gpt_neox")
    qkv = spec.layouts["gpt_neox.layers.0.attention.query_key_value.weight"][0]
    heads, per_head = qkv.factors  # type: ignore[union-attr]
    free = [p for p in per_head.parts if hasattr(p, "group")]
    assert free and all(p.over == heads.group for p in free)
    partial = [f for f in spec.fixed if f.key.endswith("query_key_value.weight") and f.partial]
    assert partial and all("rotary_emb.inv_freq" in f.reason for f in partial)


@pytest.mark.slow
def test_keyword_inputs_give_the_same_spec(derived):
    """``derive_spec`` takes inputs by name (here CLIP's ids and pixels)."""
    model, (ids, pixels), call, spec = derived("hf_clip")
    by_name = derive_spec(model, {"input_ids": ids, "pixel_values": pixels}, call=call)
    assert by_name.groups == spec.groups and by_name.layouts == spec.layouts
