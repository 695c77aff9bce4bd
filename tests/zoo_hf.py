"""Hugging Face test architectures: small configs, random weights, used as they are.

No wrapper: each builder returns the ``transformers`` model itself, and modeconnect
calls it through :func:`~modeconnect.forward.model_call` (input ids by name,
``use_cache=False``, decoder inputs for encoder-decoders, logits out). :data:`CALLS`
gives the models that need another call (CLIP's embeddings, keyword inputs).
Nothing is downloaded: configs are built in code, one :func:`hf_model` line a model.

``transformers`` is imported lazily; a builder raises ``ImportError`` without it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from modeconnect.forward import ModelCall

Builder = Callable[[], tuple[nn.Module, Any]]
Inputs = Callable[[], tuple[Tensor, ...]]
VOCAB = 64


def _ids(seed: int, length: int = 8) -> tuple[Tensor, ...]:
    return (torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed)),)


def _pixels(seed: int, size: int = 16) -> tuple[Tensor, ...]:
    return (torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed)),)


def _eos_ids() -> tuple[Tensor, ...]:
    ids = _ids(42)[0]
    ids[:, 5] = VOCAB - 1  # an end-of-sequence token to pool at
    return (ids,)


def _ids_and_pixels() -> tuple[Tensor, ...]:
    return (_eos_ids()[0], _pixels(44)[0])


def _build(cls: str, inputs: Inputs, attn: str, config: dict[str, Any]) -> tuple[nn.Module, Any]:
    import transformers

    model_class = getattr(transformers, cls)
    cfg = model_class.config_class(**config)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return model_class(cfg).eval(), inputs()


def hf_model(cls: str, inputs: Inputs, attn: str = "sdpa", **config: Any) -> Builder:
    """A builder of ``transformers.<cls>`` from its config class given ``config``, with
    attention ``attn`` and the weights of torch seed 0, in eval mode; ``inputs()`` with it."""
    return partial(_build, cls, inputs, attn, config)


# What the configs share: width 32, 2 layers of 4 heads, MLP 48, VOCAB tokens, 32 positions
# (16 in CLIP's text tower), 16 x 16 images in 4 x 4 patches.
_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
_TEXT = dict(vocab_size=VOCAB, **_SIZES)
_DECODER = dict(_TEXT, intermediate_size=48, max_position_embeddings=32, tie_word_embeddings=False)
_BERT_NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
_PATCHES = dict(_SIZES, intermediate_size=48, image_size=16, patch_size=4)
_T5 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
           num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
           decoder_start_token_id=0)  # fmt: skip
_CLIP_TEXT = dict(_TEXT, intermediate_size=48, max_position_embeddings=16, projection_dim=24,
                  eos_token_id=VOCAB - 1, bos_token_id=0, pad_token_id=1)  # fmt: skip
_CLIP_VISION = dict(_PATCHES, projection_dim=24)

# Llama: RoPE, RMSNorm, SwiGLU, grouped-query attention (4 query heads, 2 key/value).
llama_gqa = hf_model("LlamaForCausalLM", partial(_ids, 31), **_DECODER, num_key_value_heads=2)
# Llama without grouped-query attention, with tied embeddings.
llama_mha = hf_model("LlamaForCausalLM", partial(_ids, 32), num_key_value_heads=4,
                     **{**_DECODER, "tie_word_embeddings": True})  # fmt: skip
mistral = hf_model("MistralForCausalLM", partial(_ids, 33), **_DECODER, num_key_value_heads=2)
qwen2 = hf_model("Qwen2ForCausalLM", partial(_ids, 34), **_DECODER, num_key_value_heads=2)
# GPT-NeoX: partial rotary (half of each head's dims), fused QKV, parallel residual.
gpt_neox = hf_model("GPTNeoXForCausalLM", partial(_ids, 35), **_DECODER, rotary_pct=0.5)
opt = hf_model("OPTForCausalLM", partial(_ids, 36), **_TEXT, ffn_dim=48, max_position_embeddings=32,
               word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0)  # fmt: skip
gpt2 = hf_model("GPT2LMHeadModel", partial(_ids, 37), vocab_size=VOCAB, n_positions=32,
                n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                attn_pdrop=0.0)  # fmt: skip
# Falcon: ``hidden @ weight.T`` linears, multi-query attention, parallel attention/MLP.
falcon = hf_model("FalconForCausalLM", partial(_ids, 38), **_TEXT, max_position_embeddings=32,
                  hidden_dropout=0.0, attention_dropout=0.0)  # fmt: skip
# BERT encoder with a sequence-classification head (pooler and classifier).
bert = hf_model("BertForSequenceClassification", partial(_ids, 39), **_TEXT, intermediate_size=48,
                max_position_embeddings=32, **_BERT_NO_DROPOUT, num_labels=3)  # fmt: skip
# T5 under SDPA: the per-head relative position bias is passed as ``attn_mask``.
t5_sdpa = hf_model("T5ForConditionalGeneration", partial(_ids, 40), **_T5)
t5_eager = hf_model("T5ForConditionalGeneration", partial(_ids, 40), attn="eager", **_T5)
vit = hf_model("ViTForImageClassification", partial(_pixels, 41), **_PATCHES, num_labels=5,
               **_BERT_NO_DROPOUT)  # fmt: skip
# CLIP's text tower: causal encoder, pooled at the end-of-sequence token by ``index``.
clip_text = hf_model("CLIPTextModelWithProjection", _eos_ids, **_CLIP_TEXT)
clip_vision = hf_model("CLIPVisionModelWithProjection", partial(_pixels, 43), **_CLIP_VISION)
# The dual encoder on token ids and pixels (named by :data:`CALLS`); image-text logits.
clip = hf_model("CLIPModel", _ids_and_pixels, text_config=_CLIP_TEXT, vision_config=_CLIP_VISION,
                projection_dim=24)  # fmt: skip

HF: dict[str, Builder] = {
    "hf_llama_gqa": llama_gqa,
    "hf_llama_mha": llama_mha,
    "hf_mistral": mistral,
    "hf_qwen2": qwen2,
    "hf_gpt_neox": gpt_neox,
    "hf_opt": opt,
    "hf_gpt2": gpt2,
    "hf_falcon": falcon,
    "hf_bert": bert,
    "hf_t5_sdpa": t5_sdpa,
    "hf_t5_eager": t5_eager,
    "hf_vit": vit,
    "hf_clip_text": clip_text,
    "hf_clip_vision": clip_vision,
    "hf_clip": clip,
}

CALLS: dict[str, ModelCall] = {
    "hf_clip_text": ModelCall(("input_ids",), {"return_dict": True}, output="text_embeds"),
    "hf_clip_vision": ModelCall(("pixel_values",), {"return_dict": True}, output="image_embeds"),
    "hf_clip": ModelCall(
        ("input_ids", "pixel_values"), {"return_dict": True}, output="logits_per_image"
    ),
}
"""How to call the models whose default call would compare every output."""
