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
