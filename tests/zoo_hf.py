"""Hugging Face test architectures: small configs, random weights, used as they are.

No wrapper: each builder returns the ``transformers`` model itself, and modeconnect
calls it through :func:`~modeconnect.forward.model_call` (input ids by name,
``use_cache=False``, decoder inputs for encoder-decoders, logits out). :data:`CALLS`
gives the models that need another call (CLIP's embeddings, keyword inputs).
Nothing is downloaded: configs are built in code.

``transformers`` is imported lazily; a builder raises ``ImportError`` without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from modeconnect.forward import ModelCall

Builder = Callable[[], tuple[nn.Module, Any]]
VOCAB = 64


def _ids(seed: int, length: int = 8) -> tuple[Tensor, ...]:
    return (torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed)),)


def _pixels(seed: int, size: int = 16) -> tuple[Tensor, ...]:
    return (torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed)),)


def _build(cls: Any, config: Any, attn: str = "sdpa") -> nn.Module:
    config._attn_implementation = attn
    torch.manual_seed(0)
    return cls(config).eval()


_DECODER = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=32,
    tie_word_embeddings=False,
)


def llama_gqa() -> tuple[nn.Module, Any]:
    """Llama: RoPE, RMSNorm, SwiGLU, grouped-query attention (4 query heads, 2 key/value)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _build(LlamaForCausalLM, LlamaConfig(**_DECODER, num_key_value_heads=2)), _ids(31)


def llama_mha() -> tuple[nn.Module, Any]:
    """Llama without grouped-query attention, with tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**_DECODER, "tie_word_embeddings": True}, num_key_value_heads=4)
    return _build(LlamaForCausalLM, cfg), _ids(32)


def mistral() -> tuple[nn.Module, Any]:
    from transformers import MistralConfig, MistralForCausalLM

    return _build(MistralForCausalLM, MistralConfig(**_DECODER, num_key_value_heads=2)), _ids(33)


def qwen2() -> tuple[nn.Module, Any]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _build(Qwen2ForCausalLM, Qwen2Config(**_DECODER, num_key_value_heads=2)), _ids(34)


def gpt_neox() -> tuple[nn.Module, Any]:
    """GPT-NeoX: partial rotary (half of each head's dims), fused QKV, parallel residual."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        rotary_pct=0.5,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    return _build(GPTNeoXForCausalLM, cfg), _ids(35)


def opt() -> tuple[nn.Module, Any]:
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=48,
        num_attention_heads=4,
        max_position_embeddings=32,
        word_embed_proj_dim=32,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return _build(OPTForCausalLM, cfg), _ids(36)


def gpt2() -> tuple[nn.Module, Any]:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return _build(GPT2LMHeadModel, cfg), _ids(37)


def falcon() -> tuple[nn.Module, Any]:
    """Falcon: ``hidden @ weight.T`` linears, multi-query attention, parallel attention/MLP."""
    from transformers import FalconConfig, FalconForCausalLM

    cfg = FalconConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    return _build(FalconForCausalLM, cfg), _ids(38)


def bert() -> tuple[nn.Module, Any]:
    """BERT encoder with a sequence-classification head (pooler and classifier)."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    return _build(BertForSequenceClassification, cfg), _ids(39)


def _t5(attn: str) -> tuple[nn.Module, Any]:
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        decoder_start_token_id=0,
    )
    return _build(T5ForConditionalGeneration, cfg, attn), _ids(40)


def t5_sdpa() -> tuple[nn.Module, Any]:
    """T5 under SDPA: the per-head relative position bias is passed as ``attn_mask``."""
    return _t5("sdpa")


def t5_eager() -> tuple[nn.Module, Any]:
    return _t5("eager")


def vit() -> tuple[nn.Module, Any]:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        num_labels=5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return _build(ViTForImageClassification, cfg), _pixels(41)


_CLIP_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
    projection_dim=24,
    eos_token_id=VOCAB - 1,
    bos_token_id=0,
    pad_token_id=1,
)
_CLIP_VISION = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=16,
    patch_size=4,
    projection_dim=24,
)


def clip_text() -> tuple[nn.Module, Any]:
    """CLIP's text tower: causal encoder, pooled at the end-of-sequence token by ``index``."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    ids = _ids(42)[0]
    ids[:, 5] = VOCAB - 1  # an end-of-sequence token to pool at
    return _build(CLIPTextModelWithProjection, CLIPTextConfig(**_CLIP_TEXT)), (ids,)


def clip_vision() -> tuple[nn.Module, Any]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    model = _build(CLIPVisionModelWithProjection, CLIPVisionConfig(**_CLIP_VISION))
    return model, _pixels(43)


def clip() -> tuple[nn.Module, Any]:
    """The dual encoder on token ids and pixels (named by :data:`CALLS`); image-text logits."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config=_CLIP_TEXT, vision_config=_CLIP_VISION, projection_dim=24)
    return _build(CLIPModel, cfg), (clip_text()[1][0], _pixels(44)[0])


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
