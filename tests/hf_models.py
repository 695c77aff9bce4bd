"""Tiny Hugging Face models saved with ``save_pretrained``, and permuted copies of them.

Built from small configs with random weights (every parameter randomised: Hugging
Face's initialisation of norms and biases to constants hides wrong permutations);
nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

VOCAB = 64
TEXT = (
    "the cat sat on the mat and the dog sat on the log . "
    "a bird flew over the tree while the fish swam in the sea . "
) * 40


def llama(seed: int = 0, **overrides: object) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64)  # fmt: skip
    config.update(overrides)
    return _randomised(LlamaForCausalLM(LlamaConfig(**config)), seed)


def bert(seed: int = 0, head: bool = False) -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM, BertModel

    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64)  # fmt: skip
    return _randomised((BertForMaskedLM if head else BertModel)(config), seed)


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def permuted_copy(model: nn.Module, seed: int = 1) -> nn.Module:
    """``model`` with its hidden units permuted by a random permutation of its spec."""
    import copy

    from modeconnect.spec import apply_permutation, derive_spec, random_permutation

    spec = derive_spec(model, (torch.randint(0, VOCAB, (2, 8)),))
    perm = random_permutation(spec, seed=seed)
    other = copy.deepcopy(model)
    other.load_state_dict(apply_permutation(model.state_dict(), spec, perm))
    return other


def save(
    model: nn.Module,
    path: Path,
    *,
    dtype: torch.dtype = torch.float32,
    sharded: bool = False,
    tokenizer: bool = False,
) -> Path:
    """``save_pretrained`` in ``dtype``; ``sharded`` cuts it into shards of ~20 kB."""
    import copy

    copy.deepcopy(model).to(dtype).save_pretrained(
        path, max_shard_size="20KB" if sharded else "1GB"
    )
    if tokenizer:
        save_tokenizer(path)
    return path


def save_tokenizer(path: Path) -> None:
    """A word-level tokenizer of :data:`TEXT`'s words with ``[UNK]``, ``[PAD]``, ``[MASK]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(TEXT.split()))
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[MASK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]"
    )
    fast.save_pretrained(path)


def edit_config(path: Path, **changes: object) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def files(path: Path) -> dict[str, bytes]:
    """Every file of a directory, by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


NARROW, WIDE = (32, 4, 2, 24), (48, 6, 3, 40)
"""Hidden size, heads, key/value heads (Llama) and MLP width of :func:`padded_pair`'s two
models: every width 1.5 times, heads of dimension 8."""


def _family(family: str, widths: tuple[int, int, int, int], eps: float, layers: int) -> nn.Module:
    import transformers

    hidden, heads, kv, inter = widths
    if family == "gpt2":
        config: object = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=hidden, n_head=heads, n_layer=layers, n_positions=16,
            n_inner=inter, layer_norm_epsilon=eps,
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=8, rms_norm_eps=eps,
        max_position_embeddings=16,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def _pad(t: torch.Tensor, shape: torch.Size, blocks: int = 1) -> torch.Tensor:
    """``t`` in the first entries of every axis of zeros of ``shape``; the last axis in
    ``blocks`` equal blocks each padded alone (GPT-2's query, key and value in ``c_attn``)."""
    if blocks > 1:
        parts = t.chunk(blocks, -1)
        wide = (*shape[:-1], shape[-1] // blocks)
        return torch.cat([_pad(p, torch.Size(wide)) for p in parts], -1)
    out = torch.zeros(shape, dtype=t.dtype)
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


def padded_pair(
    family: str, seed: int = 0, layers: int = 1, centred: bool = True
) -> tuple[nn.Module, nn.Module]:
    """A narrow model of :data:`NARROW`'s widths (``"llama"`` or ``"gpt2"``, random weights)
    and a wider copy of :data:`WIDE`'s that computes its function: the narrow tensors in
    the first units of every axis (each query/key/value block of GPT-2's ``c_attn`` apart),
    zeros elsewhere (dead units, and dead heads: zero queries, keys and values give zero
    outputs), norm scales times sqrt(32/48) and eps times 32/48 (a norm averages over
    the dead units too). GPT-2's LayerNorm also subtracts the mean over the hidden units,
    which the dead ones would move: the narrow GPT-2's residual writers (``wte``, ``wpe``
    and both ``c_proj``) are centred over the hidden units (``centred``), so its residual
    stream has mean zero at every layer, and zeros appended keep it so."""
    gen = torch.Generator().manual_seed(seed)
    small = _family(family, NARROW, 1e-5, layers)
    wide = _family(family, WIDE, 1e-5 * NARROW[0] / WIDE[0], layers)
    norm = ("norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight")
    a = {}
    for key, value in small.state_dict().items():
        t = torch.randn(value.shape, generator=gen) * 0.3
        a[key] = t.abs() + 0.5 if key.endswith(norm) else t
    if family == "gpt2":
        a["lm_head.weight"] = a["transformer.wte.weight"]  # tied
        if centred:
            for key in a:
                if key.endswith(("wte.weight", "wpe.weight", "c_proj.bias")) or (
                    key.endswith("c_proj.weight") and a[key].shape[-1] == NARROW[0]
                ):
                    a[key] = a[key] - a[key].mean(-1, keepdim=True)
            a["lm_head.weight"] = a["transformer.wte.weight"]
    scale, shapes = (NARROW[0] / WIDE[0]) ** 0.5, wide.state_dict()
    b = {
        k: _pad(v, shapes[k].shape, 3 if k.endswith(("c_attn.weight", "c_attn.bias")) else 1)
        * (scale if k.endswith(norm) else 1.0)
        for k, v in a.items()
    }
    small.load_state_dict(a)
    wide.load_state_dict(b)
    return small, wide
