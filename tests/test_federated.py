"""Plain and aligned FedAvg over client state dicts."""

from __future__ import annotations

import pytest
import torch
from small_mlp import small_net, small_state
from torch.testing import assert_close

from modeconnect.alignment import align
from modeconnect.errors import ModeconnectError
from modeconnect.federated import aligned_fedavg, fedavg
from modeconnect.merging import merge
from modeconnect.spec import apply_permutation, derive_spec, random_permutation


@pytest.fixture(scope="module")
def spec():
    return derive_spec(small_net(), (torch.randn(2, 6),))


def test_fedavg_is_the_example_weighted_mean():
    clients = [small_state(s) for s in range(3)]
    out = fedavg(clients, [10, 30, 60])
    for key in clients[0]:
        expected = 0.1 * clients[0][key] + 0.3 * clients[1][key] + 0.6 * clients[2][key]
        assert_close(out[key], expected)


def test_fedavg_with_all_examples_on_one_client_returns_it():
    clients = [small_state(s) for s in range(3)]
    out = fedavg(clients, [0, 5, 0])
    assert all(torch.equal(out[k], clients[1][k]) for k in out)


def test_aligned_fedavg_undoes_client_permutations(spec):
    global_sd = small_state(0)
    clients = [apply_permutation(global_sd, spec, random_permutation(spec, s)) for s in (1, 2, 3)]
    out = aligned_fedavg(small_net(), clients, [5, 1, 2], reference=global_sd, spec=spec)
    assert_close(out, global_sd)
    # Plain FedAvg of the same clients is a different (broken) model.
    assert not torch.allclose(fedavg(clients, [5, 1, 2])["1.weight"], global_sd["1.weight"])


def test_aligned_fedavg_aligns_each_client_to_the_reference(spec):
    reference, clients, counts = small_state(9), [small_state(s) for s in range(3)], [100, 50, 50]
    out = aligned_fedavg(small_net(), clients, counts, reference=reference, spec=spec)
    aligned = [align(small_net(), reference, c, spec=spec).aligned for c in clients]
    assert_close(out, fedavg(aligned, counts))


@pytest.mark.parametrize("reference", [None, 1])
def test_aligned_fedavg_is_merge_with_example_weights(spec, reference):
    clients, counts = [small_state(s) for s in range(3)], [3, 2, 1]
    out = aligned_fedavg(small_net(), clients, counts, reference=reference, spec=spec)
    expected = merge(
        small_net(), clients, weights=counts, reference=reference, spec=spec
    ).state_dict
    assert_close(out, expected)


def test_method_none_is_plain_fedavg():
    clients, counts = [small_state(s) for s in range(3)], [3, 2, 1]
    out = aligned_fedavg(small_net(), clients, counts, reference=small_state(7), method="none")
    assert_close(out, fedavg(clients, counts))


@pytest.mark.parametrize("fn", ["fedavg", "aligned"])
def test_a_client_with_other_shapes_is_rejected_by_index(spec, fn):
    reference, clients = small_state(0), [small_state(s) for s in range(3)]
    clients[2]["3.weight"] = torch.zeros(12, 7)
    match = r"client 2: tensor '3\.weight' has shape \(12, 7\) but .* has \(12, 10\)"
    with pytest.raises(ModeconnectError, match=match):
        if fn == "fedavg":
            fedavg(clients, [1, 1, 1])
        else:
            aligned_fedavg(small_net(), clients, [1, 1, 1], reference=reference, spec=spec)


def test_a_client_with_other_keys_is_rejected_by_index(spec):
    clients = [small_state(s) for s in range(3)]
    clients[1]["extra"] = torch.zeros(2)
    with pytest.raises(
        ModeconnectError, match=r"client 1: keys differ from the reference: .*'extra'"
    ):
        aligned_fedavg(small_net(), clients, [1, 1, 1], reference=small_state(0), spec=spec)


def test_a_diverged_client_is_rejected(spec):
    clients = [small_state(s) for s in range(3)]
    clients[0]["1.bias"][3] = float("inf")
    with pytest.raises(
        ModeconnectError, match=r"client 0: tensor '1\.bias' \(10,\) has 1 non-finite"
    ):
        aligned_fedavg(small_net(), clients, [1, 1, 1], reference=small_state(5), spec=spec)


def test_num_examples_are_checked(spec):
    with pytest.raises(ModeconnectError, match=r"got 2 num_examples \[1\.0, 2\.0\] for 3 models"):
        fedavg([small_state(s) for s in range(3)], [1, 2])
    with pytest.raises(ModeconnectError, match="num_examples .* contain -3.0"):
        aligned_fedavg(
            small_net(), [small_state(0), small_state(1)], [1, -3], reference=None, spec=spec
        )
