"""Small test architectures for the spec engine, alignment and merging tests.

Every builder returns ``(model, example_input)``: the model in ``eval()`` mode with
its default initialisation, and a tuple of positional arguments with batch size 2.
:data:`ZOO` names each model with its class (or function) and the seed and shape of
its input.
Widths are tiny and deliberately distinct (8/12/16/20/24/...) so that accidental
shape coincidences between unrelated axes are rare.

Call :func:`randomize_` before any equivalence test: default initialisation
(LayerNorm weight 1, zero biases, BatchNorm running stats 0/1) hides wrong
permutations.

The Hugging Face builders (``hf_gpt2``, ``hf_bert``) import ``transformers`` lazily
and raise ``ImportError`` when it is missing; :data:`HF_MODELS` names them so tests
can skip them.  They wrap the HF model in a module that returns a plain tensor
(``.logits`` for GPT-2, ``.last_hidden_state`` for BERT).

More architectures live beside this file: torchvision-style models in
:mod:`zoo_vision` and unwrapped Hugging Face models in :mod:`zoo_hf`.
:func:`soundness` and :func:`recovered` are the two checks every spec must pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

Builder = Callable[[], tuple[nn.Module, tuple[Tensor, ...]]]

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*d, InstanceNorm*d
    nn.LayerNorm,
    nn.GroupNorm,
)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES = (*_NORM_TYPES, nn.RMSNorm)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(seed: int, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=_gen(seed))


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, _NORM_TYPES):
        return True
    # Hugging Face / custom norms (e.g. "LlamaRMSNorm", "T5LayerNorm").
    name = type(module).__name__.lower()
    return "norm" in name and not isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding))


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Set every floating parameter and buffer of ``model`` to random values, in place.

    - norm scale weights (BatchNorm/LayerNorm/GroupNorm/RMSNorm ``weight``) and
      BatchNorm ``running_var``: uniform in [0.5, 1.5];
    - BatchNorm ``running_mean``: normal, std 0.5;
    - other tensors with ``ndim >= 2`` (weights, embeddings, class tokens, position
      embeddings): normal with std ``1/sqrt(fan_in)``, ``fan_in = numel / shape[0]``
      (keeps activations O(1) through deep stacks);
    - other 1-D / 0-D tensors (biases): normal, std 0.5.

    Integer and boolean buffers (``num_batches_tracked``, masks, position ids) are
    left alone.  Tied parameters are set once (they are one tensor).  Returns
    ``model``.
    """
    g = _gen(seed)
    seen: set[int] = set()
    for _, module in model.named_modules():
        norm = _is_norm(module)
        tensors = [
            *module.named_parameters(recurse=False),
            *((n, b) for n, b in module.named_buffers(recurse=False) if b is not None),
        ]
        for name, t in tensors:
            if not t.is_floating_point() or id(t) in seen:
                continue
            seen.add(id(t))
            if (norm and name == "weight") or name == "running_var":
                new = torch.rand(t.shape, generator=g) + 0.5
            elif name == "running_mean":
                new = torch.randn(t.shape, generator=g) * 0.5
            elif t.ndim >= 2:
                fan_in = max(1, t.numel() // max(1, t.shape[0]))
                new = torch.randn(t.shape, generator=g) / math.sqrt(fan_in)
            else:
                new = torch.randn(t.shape, generator=g) * 0.5
            t.copy_(new.to(dtype=t.dtype, device=t.device))
    return model


# --------------------------------------------------------------------------- MLPs


def mlp_seq() -> nn.Module:
    return nn.Sequential(
        nn.Linear(12, 20),
        nn.ReLU(),
        nn.Linear(20, 24),
        nn.ReLU(),
        nn.Linear(24, 5),
    )


class MLPClass(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 20)
        self.fc2 = nn.Linear(20, 24)
        self.fc3 = nn.Linear(24, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LayerNormMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 20)
        self.ln1 = nn.LayerNorm(20)
        self.fc2 = nn.Linear(20, 24)
        self.ln2 = nn.LayerNorm(24)
        self.fc3 = nn.Linear(24, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.ln1(self.fc1(x)))
        x = F.relu(self.ln2(self.fc2(x)))
        return self.fc3(x)


# --------------------------------------------------------------------------- CNNs


def cnn_bn() -> nn.Module:
    # 8x8 input -> maxpool 4x4 -> avgpool 2x2 -> flatten 16*2*2 = 64 -> Linear.
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, bias=False),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(12, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 10),
    )


def cnn_adaptive() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 10),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20: 3 stages x 3 basic blocks, widths 8/16/32."""

    def __init__(self, widths: tuple[int, int, int] = (8, 16, 32), num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers = []
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(3):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, w, stride))
                cin = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    """A residual block's projection shortcut (1x1 conv, BatchNorm), where its shape changes."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, mid: int, stride: int = 1) -> None:
        super().__init__()
        cout = mid * self.expansion
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = downsample(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class BottleneckNet(nn.Module):
    """Stem + one ResNet-50-style bottleneck stage (3 blocks, 12 -> 6 -> 24) + head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.layer1 = nn.Sequential(
            Bottleneck(12, 6, stride=2), Bottleneck(24, 6), Bottleneck(24, 6)
        )
        self.fc = nn.Linear(24, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.fc(x)


class VGG11BN(nn.Module):
    cfg = (8, "M", 12, "M", 16, 16, "M", 20, 20, "M", 20, 20, "M")

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                layers += [
                    nn.Conv2d(cin, v, 3, padding=1),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(cin, 24),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(24, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.relu(self.bn(x)))


class DenseNetBlock(nn.Module):
    """Stem 8 ch, 3 dense layers of growth 6 (cat -> 14, 20, 26), transition 26 -> 12."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layers = nn.ModuleList([DenseLayer(8 + 6 * i, 6) for i in range(3)])
        self.trans_bn = nn.BatchNorm2d(26)
        self.trans_conv = nn.Conv2d(26, 12, 1, bias=False)
        self.norm = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        x = self.trans_conv(F.relu(self.trans_bn(x)))
        x = F.avg_pool2d(x, 2)
        x = F.relu(self.norm(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class GroupedConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.gconv = nn.Conv2d(16, 24, 3, padding=1, groups=4)  # 4 groups: 4 in -> 6 out each
        self.bn2 = nn.BatchNorm2d(24)
        self.dwconv = nn.Conv2d(24, 24, 3, padding=1, groups=24)  # depthwise
        self.bn3 = nn.BatchNorm2d(24)
        self.pwconv = nn.Conv2d(24, 12, 1)  # pointwise
        self.fc = nn.Linear(12, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.gconv(x)))
        x = F.relu(self.bn3(self.dwconv(x)))
        x = F.relu(self.pwconv(x))
        x = x.mean(dim=(2, 3))
        return self.fc(x)


class GroupNormCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, 24)  # 4 groups of 6
        self.conv2 = nn.Conv2d(24, 20, 3, padding=1)
        self.gn2 = nn.GroupNorm(5, 20)  # 5 groups of 4
        self.fc = nn.Linear(20, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


# --------------------------------------------------------------------------- transformers


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyViT(nn.Module):
    """16x16 image, 4x4 patches (16 tokens + class token), dim 24, 4 heads of 6, 2 blocks."""

    def __init__(self, dim: int = 24, heads: int = 4, mlp: int = 40, depth: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.ModuleList([ViTBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, 16, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


class GPTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        h = self.ln1(x)
        q = self.q(h).view(b, t, self.heads, c // self.heads).transpose(1, 2)
        k = self.k(h).view(b, t, self.heads, c // self.heads).transpose(1, 2)
        v = self.v(h).view(b, t, self.heads, c // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyGPT(nn.Module):
    """vocab 50, context 16, dim 24, 4 heads of 6, MLP 40, 2 blocks, head tied to tok."""

    def __init__(
        self, vocab: int = 50, ctx: int = 16, dim: int = 24, heads: int = 4, mlp: int = 40
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(ctx, dim)
        self.blocks = nn.ModuleList([GPTBlock(dim, heads, mlp) for _ in range(2)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.tok(idx) + self.pos(pos)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def gpt() -> tuple[nn.Module, tuple[Tensor, ...]]:
    idx = torch.randint(0, 50, (2, 10), generator=_gen(13))
    return TinyGPT().eval(), (idx,)


# --------------------------------------------------------------------------- Hugging Face


class HFLogits(nn.Module):
    """Wraps a Hugging Face causal LM so that forward returns the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


class HFHidden(nn.Module):
    """Wraps a Hugging Face encoder so that forward returns ``last_hidden_state``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids).last_hidden_state


HF_ATTN_IMPLEMENTATION = "sdpa"


def hf_gpt2(
    attn_implementation: str = HF_ATTN_IMPLEMENTATION,
) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """``GPT2LMHeadModel`` (tied head) from a tiny config; returns ``.logits``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 10), generator=_gen(14))
    return HFLogits(model).eval(), (ids,)


def hf_bert(
    attn_implementation: str = HF_ATTN_IMPLEMENTATION,
) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """``BertModel`` (no pooler) from a tiny config; returns ``.last_hidden_state``."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=100, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=80, max_position_embeddings=32, type_vocab_size=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(0)
    model = BertModel(cfg, add_pooling_layer=False).eval()
    ids = torch.randint(0, 100, (2, 10), generator=_gen(15))
    return HFHidden(model).eval(), (ids,)


def example(model: Callable[[], nn.Module], seed: int, shape: tuple[int, ...]) -> Builder:
    """The builder of ``model()`` in eval mode with one normal input of ``shape`` from ``seed``."""
    return lambda: (model().eval(), (_x(seed, *shape),))


ZOO: dict[str, Builder] = {
    "mlp_seq": example(mlp_seq, seed=1, shape=(2, 12)),
    "mlp_class": example(MLPClass, seed=2, shape=(2, 12)),
    "cnn_bn": example(cnn_bn, seed=4, shape=(2, 3, 8, 8)),
    "cnn_adaptive": example(cnn_adaptive, seed=5, shape=(2, 3, 10, 10)),
    "resnet20": example(ResNet20, seed=6, shape=(2, 3, 16, 16)),
    "resnet_bottleneck": example(BottleneckNet, seed=7, shape=(2, 3, 12, 12)),
    "vgg11_bn": example(VGG11BN, seed=8, shape=(2, 3, 32, 32)),
    "densenet_block": example(DenseNetBlock, seed=9, shape=(2, 3, 8, 8)),
    "grouped_conv": example(GroupedConvNet, seed=10, shape=(2, 3, 8, 8)),
    "groupnorm_cnn": example(GroupNormCNN, seed=11, shape=(2, 3, 8, 8)),
    "layernorm_mlp": example(LayerNormMLP, seed=3, shape=(2, 12)),
    "vit": example(TinyViT, seed=12, shape=(2, 3, 16, 16)),
    "gpt": gpt,
    "hf_gpt2": hf_gpt2,
    "hf_bert": hf_bert,
}

#: Builders that need ``transformers`` (raise ImportError without it).
HF_MODELS: frozenset[str] = frozenset({"hf_gpt2", "hf_bert"})


def build(name: str, seed: int = 0) -> nn.Module:
    """A zoo model by name with every parameter randomised, for ``--model tests/zoo.py:build``."""
    model, _ = ZOO[name]()
    return randomize_(model, seed).eval()


def example_input(name: str) -> tuple[Tensor, ...]:
    """The example input of a zoo model."""
    return ZOO[name]()[1]


# --------------------------------------------------------------------------- checks


def soundness(model: nn.Module, inputs: Any, spec: Any, seed: int, call: Any = None) -> float:
    """``max |f(x) - f_π(x)| / max |f(x)|`` for a random permutation π of every group.

    The model is called as modeconnect calls it (:func:`modeconnect.forward.run`), so
    Hugging Face models get their inputs by name and are compared on their logits.
    """
    from modeconnect.forward import eval_mode, run
    from modeconnect.spec import apply_permutation, random_permutation

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    permuted = apply_permutation(state, spec, random_permutation(spec, seed))
    with torch.no_grad(), eval_mode(model):
        ys = _floats(run(model, state, inputs, call=call))
        zs = _floats(run(model, permuted, inputs, call=call))
    diff = max(float((y.double() - z.double()).abs().max()) for y, z in zip(ys, zs))
    return diff / max(float(y.double().abs().max()) for y in ys)


def _floats(out: Any) -> list[Tensor]:
    from modeconnect.forward import output_tensors

    return output_tensors(out)


def derived_specs(
    builders: Mapping[str, Builder], calls: Mapping[str, Any] | None = None
) -> Callable[[str], tuple[nn.Module, Any, Any, Any]]:
    """``get(name)``: ``(model, inputs, call, spec)`` of the zoo model ``name``, randomised
    (seed 0) and its spec derived with ``calls[name]``, each model once (a module fixture)."""
    from modeconnect.spec import derive_spec

    cache: dict[str, tuple[nn.Module, Any, Any, Any]] = {}

    def get(name: str) -> tuple[nn.Module, Any, Any, Any]:
        if name not in cache:
            model, inputs = builders[name]()
            randomize_(model, seed=0)
            call = (calls or {}).get(name)
            cache[name] = (model, inputs, call, derive_spec(model, inputs, call=call))
        return cache[name]

    return get


def recovered(spec: Any, state: Mapping[str, Tensor], seed: int = 7) -> list[str]:
    """Keys that weight matching fails to bring back exactly from a permuted copy."""
    from modeconnect.matching import match_weights
    from modeconnect.spec import apply_permutation, random_permutation

    a = {k: v.detach().clone() for k, v in state.items()}
    b = apply_permutation(a, spec, random_permutation(spec, seed))
    back = apply_permutation(b, spec, match_weights(spec, a, b).perm)
    return [k for k in a if not torch.equal(back[k], a[k])]
