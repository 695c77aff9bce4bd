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


# --------------------------------------------------------------------------- across widths


def _loads_back(model: torch.nn.Module, tmp_path) -> torch.nn.Module:
    """``model`` written with ``save_pretrained`` and read with ``from_pretrained``."""
    model.save_pretrained(tmp_path)
    return type(model).from_pretrained(tmp_path).eval()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_clients_of_other_hidden_sizes_and_head_counts_fuse_into_a_model_that_loads_back(
    family, tmp_path
):
    """Two Hugging Face clients, hidden 32 with 4 heads and hidden 48 with 6 (Llama: 2
    and 3 key/value heads), MLP 24 and 40, the wide one a zero-padded copy of the narrow
    one: fused at the narrow widths they give the narrow model. ``rebuilt_model`` writes
    each state dict's widths into the config (the fusion's, and the wide client's), and
    the model saves and loads back holding those tensors."""
    from hf_models import NARROW, WIDE, padded_pair

    from modeconnect.fusion import fused_fedavg, rebuilt_model

    small, wide = padded_pair(family)
    a, b = small.state_dict(), wide.state_dict()
    x = torch.randint(0, 64, (8, 12))
    out = fused_fedavg([small, wide], [a, b], [3, 1], data=[(x, x)])
    names = ["hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size"]
    if family == "gpt2":
        names = ["n_embd", "n_head", "", "n_inner"]
    for sd, widths in ((out.state_dict, NARROW), (b, WIDE)):
        back = _loads_back(rebuilt_model(small, sd, (x[:2],), out.spec), tmp_path / str(widths))
        config = back.config.to_dict()
        assert [config[k] for k in names if k] == [w for w, k in zip(widths, names) if k]
        assert_close(back.state_dict(), dict(sd), atol=0, rtol=0)
        if widths == NARROW:
            with torch.no_grad():
                assert_close(back(x).logits, small(x).logits, atol=1e-4, rtol=1e-4)
    assert small.config.to_dict()[names[0]] == NARROW[0]  # the model given is left alone


def test_a_config_that_cannot_hold_the_widths_is_one_line():
    """A GPT-2 without ``n_inner`` (the MLP is 4 × n_embd) cannot be rebuilt with an MLP of
    another width: refused in one line naming the keywords and the widths."""
    transformers = pytest.importorskip("transformers")
    from modeconnect.fusion import rebuilt_model

    def gpt2(inner):
        config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_head=2, n_layer=1,
                                         n_positions=16, n_inner=inner)  # fmt: skip
        return transformers.GPT2LMHeadModel(config).eval()

    x = torch.randint(0, 64, (2, 8))
    base = gpt2(None)
    spec = derive_spec(base, (x,))
    with pytest.raises(ModeconnectError) as err:
        rebuilt_model(base, gpt2(40).state_dict(), (x,), spec)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(
        "model keyword config.n_embd+config.n_head sets the width of groups ['P0', 'P1', "
        "'P4'] together, but they change by different ratios (P0 16->16, P1 2->2, P4 64->40)"
    )
