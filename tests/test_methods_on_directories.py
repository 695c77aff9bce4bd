"""Every alignment method runs on every kind of input: Hugging Face directories too.

A directory is read lazily and its model is built on the meta device, so a method that
runs the model's graph (activation matching, OT with activation costs) must run it on
the real weights. B is a permuted copy of A: each method must find the permutation back,
so aligned B computes what A computes.
"""

from __future__ import annotations

from pathlib import Path

import hf_models as hf
import pytest
import torch
from click.testing import CliRunner

from modeconnect.matching import METHOD_NAMES
from modeconnect_cli.main import main

IDS = torch.randint(0, hf.VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("methods")
    a = hf.llama()
    torch.save(IDS, root / "ids.pt")
    return hf.save(a, root / "a"), hf.save(hf.permuted_copy(a), root / "b"), root / "ids.pt"


def _logits(path: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    model.config.use_cache = False
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_each_method_aligns_hugging_face_directories(pair, tmp_path: Path, method: str) -> None:
    a, b, ids = pair
    out = tmp_path / "c"
    result = CliRunner().invoke(
        main, ["align", str(a), str(b), "--method", method, "--data", str(ids), "--train",
               str(ids), "--steps", "3", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "aligned B == B" in result.stdout
    torch.testing.assert_close(_logits(out), _logits(a), rtol=1e-4, atol=1e-4)
