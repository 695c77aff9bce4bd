"""N-model merging: MergeMany, fixed references, weights, the guard, input checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from small_mlp import small_net, small_state
from torch.testing import assert_close
from zoo import ZOO, randomize_

from modeconnect.alignment import align
from modeconnect.errors import ModeconnectError, ShapeMismatch
from modeconnect.evaluation import evaluate, interpolate
from modeconnect.matching import METHODS, Alignment
from modeconnect.merging import (
    MergeResult,
    compose_permutations,
    merge,
    normalize_weights,
    weighted_average,
)
from modeconnect.models import mlp
from modeconnect.spec import apply_permutation, derive_spec, random_permutation
from modeconnect.training import train_classifier

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"


@pytest.fixture(scope="module")
def spec():
    return derive_spec(small_net(), (torch.randn(2, 6),))


def _clone(sds):
    return [{k: v.clone() for k, v in sd.items()} for sd in sds]


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("reference", [None, 0])
def test_permuted_copies_merge_to_the_model(spec, reference):
    base = small_state(0)
    copies = [base] + [
        apply_permutation(base, spec, random_permutation(spec, s)) for s in (1, 2, 3)
    ]
    res = merge(small_net(), copies, reference=reference, spec=spec)
    assert isinstance(res, MergeResult)
    assert_close(res.state_dict, base)
    for sd, perm in zip(copies, res.permutations, strict=True):
        assert_close(apply_permutation(sd, spec, perm), base)
    assert res.converged


@pytest.mark.parametrize("name", ["cnn_bn", "vit"])
def test_permuted_copies_of_zoo_models(name):
    model, x = ZOO[name]()
    randomize_(model, seed=1)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    s = derive_spec(model, x)
    copies = [base, apply_permutation(base, s, random_permutation(s, 7))]
    res = merge(model, copies, spec=s, inputs=x)
    assert_close(res.state_dict, base)


def test_merged_basis_is_the_heaviest_model(spec):
    base = small_state(0)
    copies = [apply_permutation(base, spec, random_permutation(spec, s)) for s in (1, 2, 3)]
    res = merge(small_net(), copies, weights=[1, 3, 2], spec=spec)
    assert_close(res.state_dict, copies[1])
    assert res.weights == pytest.approx((1 / 6, 3 / 6, 2 / 6))


@pytest.mark.parametrize("kwargs", [{}, {"reference": 0}, {"method": "none"}])
def test_weight_one_returns_the_first_model_exactly(spec, kwargs):
    sds = [small_state(s) for s in (0, 1, 2)]
    res = merge(small_net(), sds, weights=[1, 0, 0], spec=spec, **kwargs)
    for key, t in sds[0].items():
        assert torch.equal(res.state_dict[key], t), key


def test_two_models_equal_weights_is_the_aligned_midpoint(spec):
    a, b = small_state(0), small_state(1)
    res = merge(small_net(), [a, b], reference=0, spec=spec)
    aligned = align(small_net(), a, b, spec=spec).aligned
    assert_close(res.state_dict, interpolate(a, aligned, 0.5))
    # MergeMany: the same identity in its own basis (model 0's).
    many = merge(small_net(), [a, b], spec=spec)
    assert all(torch.equal(p, torch.arange(len(p))) for p in many.permutations[0].values())
    b_in_basis = apply_permutation(b, spec, many.permutations[1])
    assert_close(many.state_dict, interpolate(a, b_in_basis, 0.5))


def test_fixed_state_dict_reference(spec):
    ref = small_state(9)
    sds = [small_state(0), small_state(1), small_state(2)]
    res = merge(small_net(), sds, reference=ref, weights=[2, 1, 1], spec=spec)
    expected = weighted_average(
        [
            apply_permutation(sd, spec, align(small_net(), ref, sd, spec=spec).alignment.perm)
            for sd in sds
        ],
        [0.5, 0.25, 0.25],
    )
    assert_close(res.state_dict, expected)
    assert res.reference == "state dict" and res.rounds == 0


def test_plain_average(spec):
    sds = [small_state(s) for s in range(3)]
    res = merge(small_net(), sds, weights=[1, 1, 2], method="none")
    for key in sds[0]:
        assert_close(
            res.state_dict[key], 0.25 * sds[0][key] + 0.25 * sds[1][key] + 0.5 * sds[2][key]
        )
    assert res.rounds == 0 and res.reference == "none"


def test_inputs_are_not_modified(spec):
    sds = [small_state(s) for s in range(3)]
    before = _clone(sds)
    merge(small_net(), sds, spec=spec)
    merge(small_net(), sds, method="none")
    for sd, old in zip(sds, before, strict=True):
        for key in sd:
            assert torch.equal(sd[key], old[key])


def test_integer_buffers_come_from_the_first_model():
    model, x = ZOO["cnn_bn"]()
    sds = []
    for seed, count in ((0, 7), (1, 3)):
        randomize_(model, seed=seed)
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        sds.append({k: torch.tensor(count) if k.endswith("num_batches_tracked") else v
                    for k, v in sd.items()})  # fmt: skip
    res = merge(model, sds, inputs=x)
    counts = [v for k, v in res.state_dict.items() if k.endswith("num_batches_tracked")]
    assert counts and all(int(c) == 7 for c in counts)


def test_compose_permutations_matches_applying_twice():
    model, x = ZOO["gpt"]()
    randomize_(model, seed=0)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    s = derive_spec(model, x)
    assert any(g.batch_over for g in s.groups.values())  # heads: batched inner groups
    p, q = random_permutation(s, 1), random_permutation(s, 2)
    twice = apply_permutation(apply_permutation(sd, s, p), s, q)
    assert_close(apply_permutation(sd, s, compose_permutations(s, p, q)), twice, rtol=0, atol=0)


def test_the_guard_rejects_a_wrong_spec(monkeypatch):
    # A spec that may permute the classifier's outputs, with a method that does so:
    # the permuted model computes something else, and the merge must refuse.
    net = small_net()
    bad = derive_spec(net, (torch.randn(2, 6),), permute_output=True)

    def scramble(spec, a, b, *, seed=0, **_):
        return Alignment("scramble", random_permutation(spec, seed + 1), 0.0, 1, 0.0, seed)

    monkeypatch.setitem(METHODS, "scramble", scramble)
    with pytest.raises(ModeconnectError, match="permuted model 1 does not compute the same"):
        merge(net, [small_state(0), small_state(1)], method="scramble", reference=0, spec=bad)


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda sd: sd.update({"1.weight": torch.zeros(5, 6)}),
         r"model 2: tensor '1\.weight' has shape \(5, 6\) but model 0 has \(10, 6\)"),
        (lambda sd: sd.pop("3.bias"), r"model 2: keys differ from model 0: missing \['3\.bias'\]"),
        (lambda sd: sd.update({"x": torch.zeros(1)}), r"unexpected \['x'\]"),
        (lambda sd: sd["1.bias"].__setitem__(0, float("nan")),
         r"model 2: tensor '1\.bias' \(10,\) has 1 non-finite values"),
        (lambda sd: sd.update({"1.bias": sd["1.bias"].double()}),
         r"model 2: tensor '1\.bias' has dtype torch\.float64 but model 0 has torch\.float32"),
    ],
)  # fmt: skip
def test_mismatched_or_nonfinite_inputs_are_rejected(spec, mutate, message):
    sds = [small_state(s) for s in range(3)]
    mutate(sds[2])
    with pytest.raises(ModeconnectError, match=message):
        merge(small_net(), sds, spec=spec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": [1, 2]}, r"got 2 weights \[1\.0, 2\.0\] for 3 models"),
        ({"weights": [1, -1, 1]}, r"contain -1\.0; they must be finite and >= 0"),
        ({"weights": [0, 0, 0]}, "sum to 0"),
        ({"weights": [1, float("inf"), 1]}, "contain inf"),
        ({"method": "nope"}, r"unknown alignment method 'nope'; valid methods: .*none.*weight"),
        ({"reference": 3}, "reference=3 is out of range for 3 models"),
        ({"reference": "a"}, "must be a model index, a state dict, or None"),
        ({"bn": "reset"}, "pass data"),
        ({"bn": "maybe"}, "bn='maybe' is not one of none, reset"),
        ({"max_rounds": 0}, "max_rounds=0 must be a positive integer"),
    ],
)
def test_bad_arguments_are_rejected(spec, kwargs, message):
    with pytest.raises(ModeconnectError, match=message):
        merge(small_net(), [small_state(s) for s in range(3)], spec=spec, **kwargs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda v: v.double(), r"B: tensor '1\.weight' \(10, 6\) has dtype torch\.float64 but "
                               r"the model's is torch\.float32; cast the state dict"),
        (lambda v: v.to(torch.float8_e4m3fn), r"dtype torch\.float8_e4m3fn but the model's"),
        (lambda v: v[:, :4], r"B: tensor '1\.weight' has shape \(10, 4\) but the model's is "
                             r"\(10, 6\); load it into the same architecture"),
    ],
    ids=["float64", "float8", "shape"],
)  # fmt: skip
def test_state_dicts_that_do_not_fit_the_model_get_one_line(spec, change, message):
    """Every model's tensors against the model's own, before anything runs (an align call
    with a narrower B ended in an IndexError, one in another dtype in a matmul error)."""
    a, b = small_state(0), small_state(1)
    wrong = {**b, "1.weight": change(b["1.weight"])}
    with pytest.raises(ShapeMismatch, match=message):
        align(small_net(), a, wrong, spec=spec, inputs=(torch.randn(2, 6),))
    # two alike: they agree with each other, not with the model
    with pytest.raises(ShapeMismatch, match=message.replace("B:", "model 0:")):
        merge(small_net(), [wrong, dict(wrong)], spec=spec, inputs=(torch.randn(2, 6),))


def test_reference_state_dict_must_fit(spec):
    ref = small_state(0)
    ref["1.weight"] = torch.zeros(4, 6)
    with pytest.raises(ModeconnectError, match=r"reference: tensor '1\.weight' has shape \(4, 6\)"):
        merge(small_net(), [small_state(1), small_state(2)], reference=ref, spec=spec)


def test_normalize_weights():
    assert normalize_weights(None, 4) == (0.25,) * 4
    assert normalize_weights([10, 30], 2) == (0.25, 0.75)
    with pytest.raises(ModeconnectError, match="must be numbers"):
        normalize_weights(["a", 1], 2)


# --------------------------------------------------------------------------- BatchNorm


@pytest.mark.skipif(
    importlib.util.find_spec("modeconnect.bn") is None,
    reason="modeconnect.bn (reset_batchnorm) is not in this tree yet",
)
def test_bn_reset_recomputes_statistics():
    from modeconnect.bn import reset_batchnorm

    model, x = ZOO["cnn_bn"]()
    sds = []
    for seed in (0, 1):
        randomize_(model, seed=seed)
        sds.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    data = [(torch.randn(16, *x[0].shape[1:], generator=torch.Generator().manual_seed(i)),
             torch.zeros(16, dtype=torch.long)) for i in range(2)]  # fmt: skip
    res = merge(model, sds, data=data, bn="reset")
    plain = merge(model, sds, data=data)
    assert_close(res.state_dict, reset_batchnorm(model, plain.state_dict, data))
    assert res.bn == "reset"


# --------------------------------------------------------------------------- measurement


def _train_digits(seed: int, data, hidden, epochs: int = 6) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = train_classifier(mlp(64, hidden, 10), data["x"], data["y"], epochs=epochs, lr=0.1,
                           seed=seed, schedule="constant")  # fmt: skip
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_merge_of_four_trained_models_beats_the_plain_average():
    train = torch.load(CHECKPOINTS / "digits_train.pt", weights_only=True)
    test = torch.load(CHECKPOINTS / "digits_test.pt", weights_only=True)
    hidden = [64, 64]
    sds = [_train_digits(seed, train, hidden) for seed in range(4)]
    net, batches = mlp(64, hidden, 10), [(test["x"], test["y"])]
    inputs = [evaluate(net, sd, batches).accuracy for sd in sds]
    plain = evaluate(net, merge(net, sds, method="none").state_dict, batches).accuracy
    result = merge(net, sds)
    assert result.converged and result.rounds < 20  # monotone MergeMany stops by itself
    merged = evaluate(net, result.state_dict, batches).accuracy
    # Seen: inputs ~95-97 %, plain average ~25-45 %, MergeMany ~95-97 %.
    assert min(inputs) > 0.9
    assert plain < 0.7
    assert merged > plain + 0.3
    assert merged > min(inputs) - 0.05
