"""`modeconnect align` end to end through the CLI on every architecture family of the zoo.

A is a zoo model with all parameters randomised; B is A with a random permutation of
every free group. Aligning must recover A exactly, pass the guard, and (for
classifiers, with data) give a zero barrier.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import ROOT
from zoo import HF_MODELS, ZOO, build, example_input

from modeconnect.io.checkpoints import load_checkpoint, save_checkpoint
from modeconnect.spec import apply_permutation, derive_spec, random_permutation
from modeconnect_cli.main import main

ZOO_REF = str(ROOT / "tests" / "zoo.py") + ":build"
CLASSIFIERS = {"mlp_seq", "cnn_bn", "resnet20", "vgg11_bn", "densenet_block", "vit"}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_align_recovers_permuted_copy_through_cli(tmp_path, name):
    if name in HF_MODELS:
        pytest.importorskip("transformers")
    model = build(name)
    inputs = example_input(name)
    spec = derive_spec(model, inputs)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = apply_permutation(a, spec, random_permutation(spec, 11))
    kwargs = {"name": name}
    pa, pb = tmp_path / "a.pt", tmp_path / "b.safetensors"
    save_checkpoint(pa, a, model_ref=ZOO_REF, model_kwargs=kwargs)
    save_checkpoint(pb, b, model_ref=ZOO_REF, model_kwargs=kwargs)
    x = inputs[0]
    args = ["align", str(pa), str(pb), "--trust-model-ref", "--out", str(tmp_path / "o.pt"),
            "--json", str(tmp_path / "r.json"), "--steps", "3"]  # fmt: skip
    if name in CLASSIFIERS:
        with torch.no_grad():
            logits = model(x)
        data = tmp_path / "data.pt"
        torch.save({"x": x, "y": logits.argmax(-1)}, data)
        args += ["--data", str(data)]
    else:
        args += ["--input-shape", ",".join(map(str, x.shape))]
        if not x.is_floating_point():
            args += ["--input-dtype", "long"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["equivalence"]["passed"]
    aligned = load_checkpoint(tmp_path / "o.pt").state_dict
    for key in a:
        assert torch.equal(aligned[key], a[key]), key
    if name in CLASSIFIERS:
        assert report["aligned"]["barrier"] == {"loss": 0.0, "error": 0.0, "definition": "lerp"}
