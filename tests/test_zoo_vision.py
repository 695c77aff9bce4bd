"""Specs for torchvision-style architectures: sound, recoverable, and nothing frozen but the
classifier (issue 11).

Each model is randomised first (default initialisation hides wrong permutations). A
random permutation of every group must leave the outputs unchanged (relative 1e-5),
weight matching must bring a permuted copy back exactly, and the only weight matrix
whose output axis stays fixed is the classifier's. One model per family runs by
default; the others are marked ``slow``.
"""

from __future__ import annotations

import pytest
from zoo import derived_specs, recovered, soundness
from zoo_vision import VISION

from modeconnect.spec import Coverage

CLASSIFIER = {
    "tv_resnet18": "fc.weight",
    "tv_resnet50": "fc.weight",
    "tv_mobilenet_v2": "classifier.1.weight",
    "tv_mobilenet_v3": "classifier.3.weight",
    "tv_efficientnet": "classifier.1.weight",
    "tv_convnext": "classifier.2.weight",
    "tv_shufflenet_v2": "fc.weight",
    "tv_swin": "head.weight",
}
GROUPS = {
    "tv_resnet18": 6, "tv_resnet50": 11, "tv_mobilenet_v2": 8, "tv_mobilenet_v3": 13,
    "tv_efficientnet": 13, "tv_convnext": 6, "tv_shufflenet_v2": 19, "tv_swin": 14,
}  # fmt: skip
SLOW = {"tv_resnet50", "tv_mobilenet_v2", "tv_efficientnet"}
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in VISION]


@pytest.fixture(scope="module")
def derived():
    return derived_specs(VISION)


@pytest.mark.parametrize("name", NAMES)
def test_random_permutations_keep_the_function(derived, name):
    model, inputs, _, spec = derived(name)
    assert len(spec.groups) == GROUPS[name]
    for seed in (1, 2):
        assert soundness(model, inputs, spec, seed) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_weight_matching_recovers_a_permuted_copy(derived, name):
    model, _, _, spec = derived(name)
    missed = recovered(spec, model.state_dict())
    assert missed == []


@pytest.mark.parametrize("name", NAMES)
def test_only_the_classifier_output_is_fixed(derived, name):
    _, _, _, spec = derived(name)
    coverage = Coverage.of(spec)
    assert dict(coverage.frozen_outputs) == {CLASSIFIER[name]: "model output"}
    assert not any(r.startswith("unsupported op") for r in coverage.reasons), coverage.reasons


@pytest.mark.slow
def test_inplace_ops_and_new_rules_are_what_is_used():
    """The patterns issue 11 lists appear in these graphs (guards against a zoo drift)."""
    from modeconnect.spec.trace import trace

    seen: set[str] = set()
    for name in ("tv_resnet18", "tv_mobilenet_v3", "tv_swin", "tv_shufflenet_v2"):
        model, inputs = VISION[name]()
        graph = trace(model, inputs).program.graph
        seen |= {getattr(n.target, "__name__", "").split(".")[0] for n in graph.nodes}
    assert {"add_", "relu_", "hardswish_", "dropout_", "pad", "roll", "index"} <= seen
