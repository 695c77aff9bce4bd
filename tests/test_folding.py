"""Eval-mode BatchNorm folded into the Conv/Linear layer feeding it (issue 22).

Every folded evaluation pass is checked against the same pass unfolded
(``folding.ENABLED = False``, the exact path 0.3.0 ran), and against a plain loop.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import modeconnect as mc
import modeconnect.bn as bn_module
import modeconnect.evaluation.folding as folding
from modeconnect.evaluation import corrected_path, example_curve, example_curves, linear_path
from modeconnect.evaluation.engine import Pass
from modeconnect.evaluation.folding import fold_note, folded
from modeconnect.evaluation.scoring import get_scoring
from modeconnect.forward import Binding, eval_mode
from modeconnect.layerwise import layerwise_barriers
from modeconnect.models import conv_net


def _stats(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so every term of the fold counts."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.1)
            if m.affine:
                m.weight.data.copy_(torch.randn(m.num_features, generator=g))
                m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model


def _batches(seed: int, shape: tuple[int, ...], classes: int, n: int = 12) -> list:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)
    return list(zip(x.chunk(2), y.chunk(2), strict=True))


def _rows(model: nn.Module, batches: list, state: dict[str, Tensor] | None = None) -> tuple:
    runner = Pass.of(model, get_scoring("ce", model), per_example=True)
    params = Binding.of(model).checked(state if state is not None else model.state_dict())
    with eval_mode(model), torch.no_grad():
        return runner.run(params, batches)


def _unfolded(monkeypatch: pytest.MonkeyPatch, fn, *args):  # type: ignore[no-untyped-def]
    with monkeypatch.context() as m:
        m.setattr(folding, "ENABLED", False)
        return fn(*args)


class _Shared(nn.Module):
    """A conv whose output the BatchNorm and a skip connection both read."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)
        self.head = nn.Linear(2 * 5 * 5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        return self.head((self.bn(h) + h).flatten(1))


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:  # data-dependent: torch.fx cannot trace it
            x = -x
        return self.bn(self.conv(x)).flatten(1)


@settings(max_examples=12, deadline=None)
@given(
    dims=st.sampled_from([1, 2]),
    bias=st.booleans(),
    affine=st.booleans(),
    groups=st.sampled_from([1, 2]),
    linear_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_folded_pass_equals_unfolded(
    dims: int, bias: bool, affine: bool, groups: int, linear_bias: bool, seed: int
) -> None:
    torch.manual_seed(seed)
    conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
    model = _stats(nn.Sequential(
        conv(2, 4, 3, padding=1, bias=bias, groups=groups), norm(4, affine=affine), nn.ReLU(),
        conv(4, 4, 3, groups=groups, bias=not bias), norm(4), nn.Flatten(),
        nn.Linear(4 * 3 ** dims, 6, bias=linear_bias), nn.BatchNorm1d(6, affine=affine),
        nn.ReLU(), nn.Linear(6, 3),
    ), seed)  # fmt: skip
    found = folded(model)
    assert found is not None and [(p.producer, p.norm) for p in found.pairs] == [
        ("0", "1"), ("3", "4"), ("6", "7")
    ]  # fmt: skip
    batches = _batches(seed, (2,) + (5,) * dims, 3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(folding, "ENABLED", False)
        want = _rows(model, batches)
    got = _rows(model, batches)
    assert next(iter(found.verdicts.values())) is True
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2], want[2])
    # Hits may flip only at a near-tie of the top two logits: none here.
    assert (got[1] != want[1]).sum() <= 1


def test_not_folded_where_it_cannot_be_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    shared, branchy = _stats(_Shared(), 0), _stats(_Branchy(), 1)
    assert folded(shared) is None and "no BatchNorm reads only" in fold_note(shared)
    assert folded(branchy) is None and "does not trace" in fold_note(branchy)
    transposed = nn.Sequential(nn.ConvTranspose2d(2, 2, 3), nn.BatchNorm2d(2), nn.Flatten())
    assert folded(transposed) is None
    untracked = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False))
    assert fold_note(untracked) == "not folded: no BatchNorm with running statistics"
    batches = _batches(2, (2, 5, 5), 3)
    for model in (shared, branchy):
        unfolded = _unfolded(monkeypatch, _rows, model, batches)
        assert all(torch.equal(g, w) for g, w in zip(_rows(model, batches), unfolded))


def test_check_rejects_a_linear_whose_channels_are_not_at_dim_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On (N, 4, 4) inputs the Linear maps the last axis, the BatchNorm1d normalises
    # dim 1: the graph alone cannot tell, the check on the first batch does.
    model = _stats(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Flatten()), 3)
    batches = _batches(4, (4, 4), 16)
    got = _rows(model, batches)
    found = folded(model)
    assert found is not None and list(found.verdicts.values()) == [False]
    assert "not (N, C, ...)" in fold_note(model)
    want = _unfolded(monkeypatch, _rows, model, batches)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_hooks_training_mode_and_one_shot_batches_keep_the_unfolded_pass() -> None:
    model = _stats(conv_net(in_channels=2, channels=[4, 4], num_classes=3, image_size=6), 5)
    batches = _batches(6, (2, 6, 6), 3)
    seen: list[int] = []
    handle = model[2].register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    _rows(model, batches)
    handle.remove()
    assert seen == [6, 6] and not folded(model).verdicts  # type: ignore[union-attr]
    _rows(model, iter(batches))  # a one-shot iterator: no batch to spare for the check
    assert not folded(model).verdicts  # type: ignore[union-attr]
    model.train()  # a BatchNorm reset's passes: never folded
    assert not folded(model).applies(model)  # type: ignore[union-attr]
    model.eval()
    _rows(model, batches)
    assert folded(model).verdicts == {(torch.float32, "cpu"): True}  # type: ignore[union-attr]


def _plain_loss(model: nn.Module, state: dict[str, Tensor], batches: list) -> float:
    """The mean loss by hand: load the weights, loop over the batches."""
    model.load_state_dict(state)
    with eval_mode(model), torch.no_grad():
        total = sum(F.cross_entropy(model(x), y, reduction="sum") for x, y in batches)
    return float(total) / sum(len(y) for _, y in batches)


def _cloned(model: nn.Module, seed: int) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in _stats(model, seed).state_dict().items()}


def test_curve_and_landscape_on_a_convbn_model_equal_the_plain_loop() -> None:
    torch.manual_seed(7)
    model = conv_net(in_channels=2, channels=[4, 6], num_classes=3, image_size=6)
    a, b = _cloned(model, 8), _cloned(model, 9)
    batches = _batches(10, (2, 6, 6), 3)
    alphas = [0.0, 0.3, 0.7, 1.0]
    curve = example_curve(model, a, b, batches, alphas=alphas).curve()
    assert folded(model).verdicts == {(torch.float32, "cpu"): True}  # type: ignore[union-attr]
    for t, point in zip(alphas, curve.points, strict=True):
        state = {k: (1 - t) * a[k] + t * b[k] for k in a}
        assert point.loss == pytest.approx(_plain_loss(model, state, batches), rel=1e-5)
    g = torch.Generator().manual_seed(11)
    d1, d2 = ({k: torch.randn(p.shape, generator=g) * 0.3 for k, p in model.named_parameters()}
              for _ in range(2))  # fmt: skip
    surface = mc.surface_2d(model, a, batches, directions=(d1, d2), resolution=3)
    for j, y in enumerate(surface.ys):
        for i, x in enumerate(surface.xs):
            state = {k: v + x * d1[k] + y * d2[k] if k in d1 else v for k, v in a.items()}
            want = _plain_loss(model, state, batches)
            assert surface.loss[j][i] == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_folds_within_its_tolerance(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _stats(conv_net(in_channels=2, channels=[4, 4], num_classes=3, image_size=6), 11)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    batches = [(x.to(dtype), y) for x, y in _batches(12, (2, 6, 6), 3)]
    try:
        want = _unfolded(monkeypatch, _rows, model, batches, state)
    except RuntimeError as error:  # a kernel this CPU build lacks in this dtype
        pytest.skip(f"{dtype} evaluation not supported here: {error}")
    got = _rows(model, batches, state)
    verdict = folded(model).verdicts[(dtype, "cpu")]  # type: ignore[union-attr]
    if verdict:
        tol = 64 * torch.finfo(dtype).eps * (1 + float(want[0].abs().max()))
        torch.testing.assert_close(got[0], want[0], rtol=0.0, atol=tol)
    else:
        assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_stacked_points_fold_under_vmap(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(13)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    a, b = _cloned(model, 14), _cloned(model, 15)
    batches = _batches(16, (5,), 3)
    alphas = [i / 6 for i in range(7)]
    stacked = example_curve(model, a, b, batches, alphas=alphas, alpha_batch=4)
    assert folded(model).verdicts == {(torch.float32, "cpu"): True}  # type: ignore[union-attr]

    def alone() -> object:
        return example_curve(model, a, b, batches, alphas=alphas, alpha_batch=1)

    plain = _unfolded(monkeypatch, alone)
    for got, want in zip(stacked.curve().points, plain.curve().points, strict=True):
        assert got.loss == pytest.approx(want.loss, rel=1e-5, abs=1e-6)


def _numbers(record: object) -> list[float]:
    """Every float in a JSON-like record, in order."""
    if isinstance(record, dict):
        return [x for v in record.values() for x in _numbers(v)]
    if isinstance(record, (list, tuple)):
        return [x for v in record for x in _numbers(v)]
    return [float(record)] if isinstance(record, float) else []


def test_reset_curves_and_layerwise_barriers_equal_the_unfolded_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The reset's statistics come from training-mode passes, which never fold: were they
    # folded, the BatchNorm layers would be gone and the statistics far off.
    torch.manual_seed(17)
    model = conv_net(in_channels=2, channels=[4, 6], num_classes=3, image_size=6)
    a, b = _cloned(model, 18), _cloned(model, 19)
    test, train = _batches(20, (2, 6, 6), 3), _batches(21, (2, 6, 6), 3, n=16)
    alphas = [0.0, 0.25, 0.5, 1.0]

    def reset_curve() -> list[float]:
        correct = bn_module.make_correction(model, a, b, train, mode="reset")
        path = corrected_path(linear_path(a, b), correct)
        curve = example_curves(model, path, alphas, {"test": test}, alpha_batch=None)
        return list(curve["test"].curve().losses)

    def layerwise() -> list[float]:
        def reset(x0: dict, x1: dict) -> object:
            return bn_module.make_correction(model, x0, x1, train, mode="reset")

        found = layerwise_barriers(model, a, b, test, alphas=alphas, correction=reset)
        return _numbers(found.to_dict())

    for run in (reset_curve, layerwise):
        got, want = run(), _unfolded(monkeypatch, run)
        assert len(got) == len(want) > 3
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert folded(model).verdicts == {(torch.float32, "cpu"): True}  # type: ignore[union-attr]


def test_a_resnet_folds_every_pair_through_its_residual_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from zoo_vision import BasicBlock, ResNet

    torch.manual_seed(22)
    model = _stats(ResNet(BasicBlock), 23)
    found = folded(model)
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert found is not None and sorted(p.norm for p in found.pairs) == sorted(norms)
    batches = _batches(24, (3, 16, 16), 10)
    got, want = _rows(model, batches), _unfolded(monkeypatch, _rows, model, batches)
    assert found.verdicts == {(torch.float32, "cpu"): True}
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_the_fold_dies_with_its_model() -> None:
    model = _stats(conv_net(in_channels=2, channels=[4], num_classes=3, image_size=6), 25)
    _rows(model, _batches(26, (2, 6, 6), 3))
    assert folded(model) is not None
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
