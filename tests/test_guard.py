"""The equivalence guard (issue 18): scale-aware, unfoolable by offsets, quiet on honest models.

Adversarial B's (a constant logit offset, a per-class offset, a scaled output, each with
one hidden layer permuted wrongly, and a wrong permutation alone) must never pass.
Honest models under random correct permutations (every group at once) must pass in
float32, float16 and bfloat16: the trained digits MLP, conv nets with BatchNorm, a
tiny GPT-2 and a tiny Llama. A spec planted in the cache that the guard refuses is
derived again.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from pathlib import Path

import hf_models
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from zoo import ZOO, randomize_
from zoo_hf import gpt2

from modeconnect.alignment import align
from modeconnect.errors import ModeconnectError
from modeconnect.guard import (
    DEFAULT_TOLERANCE,
    PRECISIONS,
    Equivalence,
    EquivalenceError,
    check_equivalence,
    check_written,
    precision_of,
    require_equivalence,
    require_written,
)
from modeconnect.io.checkpoints import load_checkpoint
from modeconnect.io.spec_cache import (
    cached_spec,
    forget_cached,
    read_cached,
    with_untrusted_spec,
)
from modeconnect.models import conv_net, mlp
from modeconnect.spec import PermutationSpec, apply_permutation, derive_spec, random_permutation

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
State = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- models


class Case:
    """A model, B's weights, a probe batch and the derived spec."""

    def __init__(self, model: nn.Module, state: State, probe: tuple, spec: PermutationSpec):
        self.model, self.state, self.probe, self.spec = model.eval(), state, probe, spec

    @classmethod
    def of(cls, model: nn.Module, probe: tuple) -> Case:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return cls(model, state, probe, derive_spec(model, tuple(x[:2] for x in probe)))

    def check(self, b: State, aligned: State, dtype: torch.dtype = torch.float32) -> Equivalence:
        """The guard on (B, aligned B), everything cast to ``dtype``."""
        model = copy.deepcopy(self.model).to(dtype)
        return check_equivalence(model, _cast(b, dtype), _cast(aligned, dtype),
                                 tuple(_cast_x(x, dtype) for x in self.probe))  # fmt: skip


def _cast(state: State, dtype: torch.dtype) -> State:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _cast_x(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype) if x.is_floating_point() else x


def _digits(n: int = 64) -> torch.Tensor:
    return torch.load(CHECKPOINTS / "digits_test.pt", weights_only=True)["x"][:n]


@pytest.fixture(scope="module")
def trained() -> Case:
    """The shipped trained MLP B with 64 test digits as the probe."""
    model = mlp().eval()
    model.load_state_dict(load_checkpoint(CHECKPOINTS / "mlp_b.pt").state_dict)
    return Case.of(model, (_digits(),))


def _conv_bn() -> Case:
    model = randomize_(conv_net(), 1)  # Conv-BatchNorm-ReLU stacks on the 8x8 digits
    return Case.of(model, (_digits(32).reshape(-1, 1, 8, 8),))


def _zoo_cnn_bn() -> Case:
    model, x = ZOO["cnn_bn"]()
    probe = torch.randn(16, *x[0].shape[1:], generator=torch.Generator().manual_seed(3))
    return Case.of(randomize_(model, 2), (probe,))


def _gpt2() -> Case:
    model, _ = gpt2()
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(4))
    return Case.of(randomize_(model, 3), (ids,))


def _llama() -> Case:
    ids = torch.randint(0, hf_models.VOCAB, (2, 32), generator=torch.Generator().manual_seed(5))
    return Case.of(hf_models.llama(seed=1), (ids,))


HONEST = {"conv_bn": _conv_bn, "zoo_cnn_bn": _zoo_cnn_bn, "gpt2": _gpt2, "llama": _llama}


@pytest.fixture(scope="module")
def honest(request: pytest.FixtureRequest) -> Case:
    return HONEST[request.param]()


# --------------------------------------------------------------------------- permutations


def permuted(case: Case, seed: int, state: State | None = None) -> State:
    """B with a random correct permutation of every group."""
    b = case.state if state is None else state
    return apply_permutation(b, case.spec, random_permutation(case.spec, seed))


def wrongly_permuted(case: Case, group: int, seed: int, state: State | None = None) -> State:
    """B with one group's units permuted everywhere but in the last tensor that reads them
    (for a hidden layer: its rows moved, the next layer's columns left as they were)."""
    b = case.state if state is None else state
    names = list(case.spec.groups)
    name = names[group % len(names)]
    perm = {n: torch.arange(p.shape[-1]).expand_as(p).clone()
            for n, p in random_permutation(case.spec, seed).items()}  # fmt: skip
    perm[name] = random_permutation(case.spec, seed)[name]
    if torch.equal(perm[name], identity := perm[name].sort(dim=-1).values):
        perm[name] = identity.roll(1, dims=-1)  # small groups: never the identity
    out = apply_permutation(b, case.spec, perm)
    last = case.spec.groups[name].members[-1].key
    out[last] = b[last].clone()
    return out


def offset(state: State, bias: torch.Tensor) -> State:
    """B with ``bias`` added to the output layer's bias (every logit of every example)."""
    return {**state, "7.bias": state["7.bias"] + bias}


def scaled(state: State, factor: float) -> State:
    """B with its outputs multiplied by ``factor`` (the output layer scaled)."""
    return {**state, "7.weight": state["7.weight"] * factor, "7.bias": state["7.bias"] * factor}


def refused(run) -> str:
    """What the guard said: the failed test's name, or ``"error"`` for a clean refusal
    before comparing (B's outputs overflow the format); ``"passed"`` if it passed."""
    try:
        eq = run()
    except ModeconnectError as exc:
        assert "\n" not in str(exc)
        return "error"
    return eq.failed or "passed"


# --------------------------------------------------------------------------- adversarial B


@SETTINGS
@given(exponent=st.integers(0, 15), sign=st.sampled_from([1.0, -1.0]), group=st.integers(0, 2),
       dtype=st.sampled_from(list(DTYPES)))  # fmt: skip
def test_a_constant_logit_offset_never_hides_a_wrong_layer(trained, exponent, sign, group, dtype):
    b = offset(trained.state, torch.full((10,), sign * 10.0**exponent))
    verdict = refused(lambda: trained.check(b, wrongly_permuted(trained, group, 7, b),
                                            DTYPES[dtype]))  # fmt: skip
    assert verdict != "passed"


def test_the_red_team_case_is_refused_as_unverifiable(trained) -> None:
    """0.2.0 passed it as ``max abs diff 2.96e+01, rel 2.96e-05``."""
    b = offset(trained.state, torch.full((10,), 1e6))
    eq = trained.check(b, wrongly_permuted(trained, 1, 0, b))
    assert eq.max_rel_diff < 1e-4  # the old rule's tolerance: it would have passed
    assert eq.failed == "cannot verify" and eq.resolution > 8 * eq.limit
    with pytest.raises(EquivalenceError, match=r"^equivalence check \(cannot verify\): ") as info:
        require_equivalence(eq)
    assert "\n" not in str(info.value) and info.value.equivalence is eq


@pytest.mark.parametrize("exponent", [2, 3, 4])
def test_a_moderate_offset_leaves_the_check_strict(trained, exponent) -> None:
    b = offset(trained.state, torch.full((10,), 10.0**exponent))
    assert trained.check(b, permuted(trained, 1, b)).passed
    eq = trained.check(b, wrongly_permuted(trained, 1, 1, b))
    assert eq.failed == "predictions" and eq.agreement < 0.5


@SETTINGS
@given(exponent=st.integers(2, 12), shared=st.integers(1, 9), group=st.integers(0, 2))
def test_a_per_class_offset_never_hides_a_wrong_layer(trained, exponent, shared, group):
    """Offsets on some classes only (an output bias): row centring alone would keep them."""
    bias = torch.where(torch.arange(10) < shared, 10.0**exponent, 0.0)
    b = offset(trained.state, bias)
    assert trained.check(b, wrongly_permuted(trained, group, 2, b)).failed is not None


@SETTINGS
@given(exponent=st.integers(-30, 30), group=st.integers(0, 2))
def test_a_scaled_output_never_hides_a_wrong_layer(trained, exponent, group):
    b = scaled(trained.state, 10.0**exponent)
    eq = trained.check(b, wrongly_permuted(trained, group, 3, b))
    assert eq.failed == "predictions", eq  # scaling changes no test: not even the resolution


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("factor", [1e-6, 1e6])
def test_a_scaled_output_with_a_wrong_layer_fails_in_every_format(trained, factor, dtype) -> None:
    b = scaled(trained.state, factor)
    verdict = refused(lambda: trained.check(b, wrongly_permuted(trained, 0, 4, b), DTYPES[dtype]))
    assert verdict in ("values", "predictions", "error")  # float16 overflows at 1e6: refused


@pytest.mark.parametrize("factor", [1e-6, 1e6])
def test_scaling_changes_no_verdict_on_honest_weights(trained, factor) -> None:
    b = scaled(trained.state, factor)
    eq, plain = (
        trained.check(b, permuted(trained, 5, b)),
        trained.check(trained.state, permuted(trained, 5)),
    )
    assert eq.passed and math.isclose(eq.resolution, plain.resolution, rel_tol=1e-3)


@pytest.mark.parametrize("name", sorted(HONEST))
@pytest.mark.parametrize("group", [0, 1, -1])
def test_a_wrong_permutation_of_one_layer_fails(name, group) -> None:
    case = HONEST[name]()
    eq = case.check(case.state, wrongly_permuted(case, group, 6))
    assert eq.failed in ("values", "predictions"), eq


def test_a_wrong_spec_is_refused_by_align(trained) -> None:
    """A spec that leaves the next layer's columns in place, as a planted cache file would."""
    data = trained.spec.to_dict()
    group = data["groups"][1]
    group[3] = [m for m in group[3] if m != ["5.weight", 1]]
    data["layouts"]["5.weight"][1] = ["fixed", 512]
    wrong = PermutationSpec.from_dict(json.loads(json.dumps(data)))
    a = load_checkpoint(CHECKPOINTS / "mlp_a.pt").state_dict
    with pytest.raises(EquivalenceError, match=r"^equivalence check \(predictions\): "):
        align(trained.model, a, trained.state, inputs=trained.probe, spec=wrong)
    assert align(trained.model, a, trained.state, inputs=trained.probe).equivalence.passed


# --------------------------------------------------------------------------- honest models


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from(list(DTYPES)))
def test_the_trained_mlp_passes_in_its_own_precision(trained, seed, dtype) -> None:
    eq = trained.check(trained.state, permuted(trained, seed), DTYPES[dtype])
    assert eq.passed and eq.precision == dtype, eq
    assert eq.agreement == 1.0 and eq.max_rel_diff <= eq.tolerance / 4


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("honest", sorted(HONEST), indirect=True)
def test_honest_models_pass_in_every_format(honest, dtype) -> None:
    for seed in (0, 1, 2):
        eq = honest.check(honest.state, permuted(honest, seed), DTYPES[dtype])
        assert eq.passed, eq
        assert eq.max_rel_diff <= eq.tolerance / 4  # the margin the tolerance was chosen for


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_llama_verifies_in_half_precision_itself(dtype) -> None:
    """Not through the float32 rerun: half precision's own tolerance is what is tested."""
    case = _llama()
    eq = case.check(case.state, permuted(case, 9), DTYPES[dtype])
    assert eq.passed and eq.precision == dtype, eq


def test_half_precision_that_cannot_verify_is_checked_again_in_float32() -> None:
    case = _zoo_cnn_bn()  # randomised: its outputs hardly depend on the input
    eq = case.check(case.state, permuted(case, 0), torch.bfloat16)
    assert eq.passed and eq.precision == "float32 (from bfloat16)", eq
    assert case.check(case.state, wrongly_permuted(case, 0, 0), torch.bfloat16).failed in (
        "values", "predictions",
    )  # fmt: skip


# --------------------------------------------------------------------------- the rule's edges


class Regression(nn.Module):
    """One output per example (a 1-d output): no row to centre, one column."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.out = nn.Linear(4, 16), nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x))).squeeze(-1)


def test_a_one_column_output_is_checked() -> None:
    case = Case.of(randomize_(Regression(), 0), (torch.randn(8, 4),))
    assert case.check(case.state, permuted(case, 1)).passed
    assert case.check(case.state, wrongly_permuted(case, 0, 1)).failed == "values"
    shifted = {**case.state, "out.bias": case.state["out.bias"] + 1e7}
    assert case.check(shifted, permuted(case, 1, shifted)).failed == "cannot verify"


def test_outputs_that_do_not_depend_on_the_input_cannot_be_verified() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    case = Case.of(randomize_(model, 0), (torch.randn(6, 4),))
    case.state["0.weight"].zero_()  # every example gives the same outputs
    eq = case.check(case.state, permuted(case, 0))
    assert eq.failed == "cannot verify" and eq.variation == 0
    with pytest.raises(EquivalenceError, match="are the same for every probe input"):
        require_equivalence(eq)


def test_nan_or_a_changed_shape_never_passes(trained) -> None:
    model = copy.deepcopy(trained.model)
    bad = {**trained.state, "7.bias": torch.full((10,), float("nan"))}
    eq = check_equivalence(model, trained.state, bad, trained.probe)
    assert eq.failed == "values" and math.isnan(eq.max_rel_diff)
    head = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x = (torch.randn(4, 64),)
    three = {"1.weight": torch.randn(3, 64), "1.bias": torch.randn(3)}
    four = {"1.weight": torch.randn(4, 64), "1.bias": torch.randn(4)}
    assert check_equivalence(head, three, three, x).passed
    assert check_equivalence(head, three, four, x).failed == "values"


def test_the_message_is_one_line_naming_the_failed_test(trained) -> None:
    wrong = trained.check(trained.state, wrongly_permuted(trained, 0, 0))
    with pytest.raises(EquivalenceError, match=r"^equivalence check \(predictions\): aligned B "):
        require_equivalence(wrong)
    values = Equivalence(1.0, 1e-3, 1e-4, resolution=1e-3, limit=0.125, rows=64)
    with pytest.raises(EquivalenceError, match=r"^equivalence check \(values\): permuted m ") as e:
        require_equivalence(values, what="permuted m")
    assert "\n" not in str(e.value) and "predictions agree on 100.0% of 64" in str(e.value)


def test_the_old_fields_and_keys_stay() -> None:
    eq = Equivalence(2.0, 5e-5, 1e-4)
    assert eq.passed and eq.failed is None
    data = eq.to_dict()
    assert {"max_abs_diff": 2.0, "max_rel_diff": 5e-5, "tolerance": 1e-4, "passed": True}.items()\
        <= data.items()  # fmt: skip
    assert DEFAULT_TOLERANCE == PRECISIONS["float32"].tolerance == 256 * 2.0**-23


def test_the_precision_is_the_coarsest_of_outputs_and_weights() -> None:
    y32 = [torch.zeros(2, 3)]
    assert precision_of(y32).name == "float32"
    assert precision_of([torch.zeros(2, 3, dtype=torch.float64)]).name == "float32"
    assert precision_of(y32, {"w": torch.zeros(3, dtype=torch.bfloat16)}).name == "bfloat16"
    assert precision_of([torch.zeros(2, 3, dtype=torch.float16)]).name == "float16"

    class Lazy(Mapping):  # mappings that read lazily say the dtype they read in
        dtype: torch.dtype | None = torch.bfloat16

        def __getitem__(self, key):
            raise AssertionError("the guard reads no tensor to learn the dtype")

        def __iter__(self):
            return iter(["w"])

        def __len__(self):
            return 1

    class Stored(Lazy):
        dtype = None

        def stored_dtype(self, key):
            return torch.float16

    assert precision_of(y32, Lazy()).name == "bfloat16"
    assert precision_of(y32, Stored()).name == "float16"


def test_an_explicit_tolerance_replaces_the_precisions(trained) -> None:
    eq = check_equivalence(trained.model, trained.state, permuted(trained, 0), trained.probe,
                           tolerance=1e-12)  # fmt: skip
    assert eq.tolerance == 1e-12 and eq.failed == "values"


# --------------------------------------------------------------------------- the spec cache


def _plant_wrong(path: Path) -> None:
    data = json.loads(path.read_text())
    data["groups"][1][3] = [m for m in data["groups"][1][3] if m != ["5.weight", 1]]
    data["layouts"]["5.weight"][1] = ["fixed", 512]
    path.write_text(json.dumps(data))


def test_a_planted_spec_is_derived_again_when_the_guard_refuses_it(trained, tmp_path) -> None:
    probe = tuple(x[:2] for x in trained.probe)
    honest = cached_spec(trained.model, probe, folder=tmp_path)
    (path,) = tmp_path.glob("*.json")
    _plant_wrong(path)
    a = load_checkpoint(CHECKPOINTS / "mlp_a.pt").state_dict
    specs: list[PermutationSpec] = []

    def work(spec: PermutationSpec):
        specs.append(spec)
        return align(trained.model, a, trained.state, inputs=trained.probe, spec=spec)

    result = with_untrusted_spec(
        work, lambda: cached_spec(trained.model, probe, folder=tmp_path),
        lambda: forget_cached(trained.model, probe, folder=tmp_path),
    )  # fmt: skip
    assert len(specs) == 2 and specs[0] != honest and specs[1] == honest
    assert result.equivalence.passed
    assert read_cached(path, trained.model) == honest  # the planted file is gone


def test_a_refusal_stands_when_the_spec_is_derived_the_same(trained) -> None:
    calls: list[str] = []
    refusal = EquivalenceError("x", Equivalence(1.0, 1.0, 1e-4))

    def failing(spec):
        calls.append("work")
        raise refusal

    def obtain():
        calls.append("obtain")
        return trained.spec

    with pytest.raises(EquivalenceError) as info:
        with_untrusted_spec(failing, obtain, lambda: True)
    assert info.value is refusal and calls == ["obtain", "work", "obtain"]
    calls.clear()
    with pytest.raises(EquivalenceError):  # nothing was cached: nothing to derive again
        with_untrusted_spec(failing, obtain, lambda: False)
    assert calls == ["obtain", "work"]


def test_an_unverifiable_b_is_not_blamed_on_the_spec(trained) -> None:
    calls: list[str] = []

    def cannot(spec):
        calls.append("work")
        raise EquivalenceError("x", Equivalence(0.0, 0.0, 1e-4, resolution=1.0, limit=0.125))

    def forget():
        calls.append("forget")
        return True

    with pytest.raises(EquivalenceError):
        with_untrusted_spec(cannot, lambda: trained.spec, forget)
    assert calls == ["work"]  # B's outputs, not the spec, decide it: the cache stays


# --------------------------------------------------------------------------- as written


def test_b_as_written_in_bfloat16_passes_and_its_difference_is_the_rounding(trained) -> None:
    """Aligned B whose values are not B's (as a larger symmetry makes them) is checked as
    rounded to the stored dtype: the difference is bfloat16's rounding, within its
    tolerance, and not zero (the rounding happened)."""
    b = {k: v.to(torch.bfloat16).float() for k, v in trained.state.items()}  # B as stored
    # a value-changing map that keeps the function: scale a ReLU unit's input row by s
    # and its output column by 1/s (positive scaling commutes with ReLU)
    aligned = dict(b)
    s = torch.linspace(0.5, 2.0, b["1.weight"].shape[0])
    aligned["1.weight"], aligned["1.bias"] = b["1.weight"] * s[:, None], b["1.bias"] * s
    aligned["3.weight"] = b["3.weight"] / s
    assert check_equivalence(trained.model, b, aligned, trained.probe).passed
    stored = {k: torch.bfloat16 for k in b}
    eq = check_written(trained.model, b, aligned, stored, trained.probe)
    assert eq.passed and eq.precision == "bfloat16 (written)"
    assert eq.tolerance == PRECISIONS["bfloat16"].tolerance
    assert 0 < eq.max_rel_diff <= eq.tolerance
    require_written(eq)


def test_b_as_written_is_refused_when_the_rounding_breaks_it(trained) -> None:
    """A value float16 cannot hold (65504 at most) becomes inf when written: refused."""
    b = trained.state
    aligned = dict(b)
    s = torch.ones(b["1.weight"].shape[0])
    s[7] = 1e6  # unit 7's input row scaled past float16's range, its output column back
    aligned["1.weight"], aligned["1.bias"] = b["1.weight"] * s[:, None], b["1.bias"] * s
    aligned["3.weight"] = b["3.weight"] / s
    assert check_equivalence(trained.model, b, aligned, trained.probe).passed
    eq = check_written(trained.model, b, aligned, {"1.weight": torch.float16}, trained.probe)
    assert eq.failed == "values" and not math.isfinite(eq.max_rel_diff)
    with pytest.raises(EquivalenceError, match=r"written, values.*stored float16.*nothing"):
        require_written(eq)


def test_b_stored_in_float8_cannot_be_checked_as_written(trained) -> None:
    b = trained.state
    with pytest.raises(EquivalenceError, match="stored in float8_e4m3fn.*--symmetry permutation"):
        check_written(trained.model, b, b, {"1.weight": torch.float8_e4m3fn}, trained.probe)
