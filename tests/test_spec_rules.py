"""Op rules, one pattern at a time: each small model is randomised, its spec derived, and
checked to be sound (a random permutation of every group keeps the outputs) and to
fix exactly what it must (issue 11)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from zoo import randomize_, soundness

from modeconnect.spec import Coverage, Fixed, Leaf, Shuffle, derive_spec


def _derive(model: nn.Module, *inputs: Tensor):
    randomize_(model.eval(), seed=0)
    spec = derive_spec(model, inputs)
    for seed in (1, 2):
        assert soundness(model, inputs, spec, seed) < 1e-5
    return spec


def _reasons(spec) -> set[str]:
    return {f.reason for f in spec.fixed}


# --------------------------------------------------------------------------- in-place ops


class InPlaceBlock(nn.Module):
    """Every in-place op torchvision models use, on a residual stream."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.c1, self.c2 = nn.Linear(6, 12), nn.Linear(12, 12), nn.Linear(12, 12)
        self.out = nn.Linear(12, 3)
        self.relu, self.relu6 = nn.ReLU(inplace=True), nn.ReLU6(inplace=True)
        self.hs, self.silu = nn.Hardswish(inplace=True), nn.SiLU(inplace=True)
        self.drop = nn.Dropout(0.5, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.inp(x))
        identity = x
        out = self.relu6(self.c1(x))
        out = self.hs(out)
        out = self.c2(out)
        out += identity
        out.mul_(0.5)
        out = self.drop(self.silu(out))
        return self.out(out)


def test_inplace_ops_relate_axes_like_their_twins():
    spec = _derive(InPlaceBlock(), torch.randn(2, 6))
    assert not any("unsupported" in r for r in _reasons(spec))
    assert Coverage.of(spec).frozen_outputs == {"out.weight": "model output"}
    stream = spec.layouts["inp.weight"][0]
    assert isinstance(stream, Leaf) and spec.layouts["c2.weight"][0] == stream


class WritesIntoZeros(nn.Module):
    """A zero tensor written by position (Swin's shift mask) is data, not a uniform constant."""

    def __init__(self, written: bool) -> None:
        super().__init__()
        self.fc, self.head, self.written = nn.Linear(4, 8), nn.Linear(8, 2), written

    def forward(self, x: Tensor) -> Tensor:
        bias = x.new_zeros(8)
        if self.written:
            bias[:3] = 1.0
        return self.head(self.fc(x) + bias)


def test_uniform_constants_are_free_unless_written_by_position():
    free = _derive(WritesIntoZeros(written=False), torch.randn(2, 4))
    assert isinstance(free.layouts["fc.weight"][0], Leaf)
    written = _derive(WritesIntoZeros(written=True), torch.randn(2, 4))
    assert isinstance(written.layouts["fc.weight"][0], Fixed)
    assert "constant created by new_zeros" in _reasons(written)


# --------------------------------------------------------------------------- attention masks


class BiasedAttention(nn.Module):
    """Per-head additive bias passed to SDPA as ``attn_mask`` (T5's relative bias, ALiBi)."""

    def __init__(self, learned: bool, heads: int = 4, dim: int = 16, tokens: int = 5) -> None:
        super().__init__()
        self.heads, self.learned = heads, learned
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.randn(heads, tokens, tokens))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.learned:
            mask = self.bias.unsqueeze(0)
        else:  # ALiBi: slopes from constants
            slopes = 2.0 ** -torch.arange(1, self.heads + 1, dtype=x.dtype)
            pos = torch.arange(t, dtype=x.dtype)
            mask = (slopes[:, None, None] * (pos[None, :] - pos[:, None])[None]).unsqueeze(0)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.head(self.proj(y.transpose(1, 2).reshape(b, t, c)))


def test_learned_attention_bias_permutes_with_the_heads():
    spec = _derive(BiasedAttention(learned=True), torch.randn(2, 5, 16))
    heads = spec.layouts["bias"][0]
    qkv = spec.layouts["qkv.weight"][0]
    assert isinstance(heads, Leaf)
    assert qkv.factors[1] == heads  # type: ignore[union-attr]  # (q/k/v, heads, head dim)


def test_constant_attention_bias_fixes_the_heads():
    spec = _derive(BiasedAttention(learned=False), torch.randn(2, 5, 16))
    heads = [f for f in spec.fixed if f.key == "qkv.weight" and f.partial]
    assert [(f.size, f.reason) for f in heads] == [(4, "constant created by arange")]


# --------------------------------------------------------------------------- positional ops


class PadRollIndex(nn.Module):
    """Channels-last stage: pad and roll the spatial axes, gather a bias table by index."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 8), nn.Linear(8, 2)
        self.table = nn.Parameter(torch.randn(7, 8))
        self.register_buffer("idx", torch.tensor([0, 3, 5, 6, 1, 2]))

    def forward(self, x: Tensor) -> Tensor:  # x: (B, H, W, 3)
        h = self.fc1(x)
        h = F.pad(h, (0, 0, 0, 1, 0, 1))
        h = torch.roll(h, shifts=(1, -1), dims=(1, 2))
        h = h + self.table[self.idx].view(1, 1, 6, 8)[:, :, : h.shape[2]]
        h = torch.flip(h, dims=(1,))
        return self.fc2(h.cumsum(1).mean((1, 2)))


def test_pad_roll_index_fix_positions_only():
    spec = _derive(PadRollIndex(), torch.randn(2, 5, 5, 3))
    assert isinstance(spec.layouts["fc1.weight"][0], Leaf)
    assert isinstance(spec.layouts["table"][0], Fixed)  # rows picked by the index
    assert spec.layouts["table"][1] == spec.layouts["fc1.weight"][0]
    assert Coverage.of(spec).frozen_outputs == {"fc2.weight": "model output"}


class Gathered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:  # x: (B, T, 4), idx: (B, 1, 1)
        h = self.fc1(x)
        picked = torch.gather(h, 1, idx.expand(-1, 1, h.shape[-1]))
        return self.fc2(picked.squeeze(1))


def test_gather_along_tokens_keeps_features_free():
    x, idx = torch.randn(2, 5, 4), torch.tensor([[[1]], [[3]]])
    randomize_(Gathered().eval())
    spec = derive_spec(Gathered().eval(), (x, idx))
    assert isinstance(spec.layouts["fc1.weight"][0], Leaf)


class Transposed(nn.Module):
    """Falcon-style ``x @ self.weight.T + bias``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(10, 4))
        self.bias = nn.Parameter(torch.randn(10))
        self.head = nn.Linear(10, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(x @ self.weight.T + self.bias))


def test_weight_dot_T_is_a_linear_map():
    spec = _derive(Transposed(), torch.randn(2, 4))
    assert isinstance(spec.layouts["weight"][0], Leaf)
    assert spec.weight_outputs["weight"] == (0,)
    assert not any("unsupported" in r for r in _reasons(spec))


class ChannelShuffle(nn.Module):
    """Two branches concatenated, interleaved by ShuffleNet's shuffle, split again."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 5, 1), nn.Conv2d(3, 5, 1)
        self.c, self.d = nn.Conv2d(5, 4, 1), nn.Conv2d(5, 4, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        n, ch, h, w = y.shape
        y = y.view(n, 2, ch // 2, h, w).transpose(1, 2).contiguous().view(n, ch, h, w)
        lo, hi = y.chunk(2, dim=1)
        z = torch.cat([self.c(lo), self.d(hi)], 1)
        return self.head(z.mean((2, 3)))


def test_channel_shuffle_keeps_each_branch_its_own_permutation():
    """Nothing is fixed: each branch's channels split by where the shuffle sends them (the
    ones ``c`` reads, the ones ``d`` reads), and each part permutes on its own."""
    spec = _derive(ChannelShuffle(), torch.randn(2, 3, 4, 4))
    a, b = spec.layouts["a.weight"][0], spec.layouts["b.weight"][0]
    parts = [p for layout in (a, b) for p in layout.parts]  # type: ignore[union-attr]
    assert all(isinstance(p, Leaf) for p in parts)
    assert len({p.group for p in parts}) == 4  # type: ignore[union-attr]
    assert isinstance(spec.layouts["c.weight"][1], Shuffle)
    assert [f.reason for f in spec.fixed if not f.key.startswith("head")] == ["model input"] * 2


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_copying_pads_fix_the_padded_axis(mode):
    class Padded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.head = nn.Linear(4, 6), nn.Linear(7, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = self.fc(x)  # (B, T, 6): pad the feature axis by copying
            return self.head(F.pad(h, (1, 0), mode=mode))

    spec = _derive(Padded(), torch.randn(2, 3, 4))
    assert isinstance(spec.layouts["fc.weight"][0], Fixed)
    assert any(r.startswith("pad") for r in _reasons(spec))


class MoreOps(nn.Module):
    """einsum attention, index_select, upsampling, baddbmm with a learned bias, PReLU,
    var_mean: each relates the feature axes it should and fixes only positions."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(6, 10)
        self.conv, self.act = nn.Conv2d(10, 12, 1), nn.PReLU(12)
        self.bias = nn.Parameter(torch.randn(1, 4, 4))
        self.head = nn.Linear(12, 2)
        self.register_buffer("rows", torch.tensor([3, 0, 2, 1]))

    def forward(self, x: Tensor) -> Tensor:  # (B, T=4, 6)
        q, k, v = self.q(x), self.k(x), self.v(x)
        scores = torch.baddbmm(self.bias, q, k.transpose(1, 2))
        y = torch.einsum("bts,bsd->btd", scores.softmax(-1), v)
        y = torch.index_select(y, 1, self.rows)
        img = y.transpose(1, 2).reshape(x.shape[0], 10, 2, 2)
        img = self.act(self.conv(F.interpolate(img, scale_factor=2.0)))
        var, mean = torch.var_mean(img, dim=(2, 3))
        return self.head(var + mean)


def test_more_ops_have_rules():
    spec = _derive(MoreOps(), torch.randn(2, 4, 6))
    assert not any("unsupported" in r for r in _reasons(spec)), _reasons(spec)
    assert spec.layouts["q.weight"][0] == spec.layouts["k.weight"][0]  # q·k contracted
    assert isinstance(spec.layouts["v.weight"][0], Leaf)
    assert spec.layouts["act.weight"][0] == spec.layouts["conv.weight"][0]
    assert Coverage.of(spec).frozen_outputs == {"head.weight": "model output"}
