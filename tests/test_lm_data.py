"""Language-model data: token ids and text become ``(ids, ids)`` batches, scored by the LM head.

``--data`` for a language model read from a Hugging Face directory takes token ids
(``.pt`` with the tensor or ``{"x": ids}``, ``.npy``) or a text file tokenized with
the checkpoint's own tokenizer; causal LMs are scored by next-token cross-entropy and
masked LMs on a seeded mask, and the curves report the perplexity.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import hf_models as hf
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from modeconnect.errors import ModeconnectError
from modeconnect.io.data import TOKENS_PER_BATCH, LanguageData, check_tokens, load_data
from modeconnect_cli.main import main

IDS = torch.randint(0, hf.VOCAB, (40, 16), generator=torch.Generator().manual_seed(0))


def _esc(path: Path | str) -> str:
    return re.escape(str(path))


def _cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok")
    hf.save_tokenizer(path)
    return path


# --------------------------------------------------------------------------- token files


@pytest.mark.parametrize("form", ["tensor", "dict", "npy"])
def test_token_ids(tmp_path: Path, form: str) -> None:
    path = tmp_path / ("ids.npy" if form == "npy" else "ids.pt")
    if form == "npy":
        np.save(path, IDS.numpy().astype(np.int32))
    else:
        torch.save(IDS if form == "tensor" else {"x": IDS}, path)
    batches = load_data(path, language=LanguageData("causal"))
    assert all(torch.equal(x, y) and x.dtype == torch.long for x, y in batches)
    assert [len(x) for x, _ in batches] == [40]  # 40 x 16 tokens fit one batch
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), IDS)


def test_token_batches_are_bounded_in_tokens(tmp_path: Path) -> None:
    long = torch.zeros(10, 1024, dtype=torch.long)
    torch.save(long, tmp_path / "ids.pt")
    batches = load_data(tmp_path / "ids.pt", batch_size=500, language=LanguageData("causal"))
    assert [len(x) for x, _ in batches] == [TOKENS_PER_BATCH // 1024] * 5


def test_text_is_tokenized_into_blocks(tmp_path: Path, tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    (tmp_path / "t.txt").write_text(hf.TEXT)
    language = LanguageData("causal", tokenizer=tokenizer_dir, block_size=10)
    x = torch.cat([b[0] for b in load_data(tmp_path / "t.txt", language=language)])
    ids = AutoTokenizer.from_pretrained(tokenizer_dir)(hf.TEXT, add_special_tokens=False)
    n = len(ids["input_ids"]) // 10
    assert x.shape == (n, 10)
    assert x.reshape(-1).tolist() == ids["input_ids"][: n * 10]


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (torch.rand(4, 8), "token ids have dtype float32"),
        (torch.arange(8), r"token ids have shape \(8,\)"),
        ({"x": torch.zeros(4, 1, dtype=torch.long)}, "sequences of 1 token cannot be scored"),
    ],
)
def test_bad_token_ids(tmp_path: Path, content: object, pattern: str) -> None:
    torch.save(content, tmp_path / "ids.pt")
    with pytest.raises(ModeconnectError, match=f"{_esc(tmp_path / 'ids.pt')}: {pattern}"):
        load_data(tmp_path / "ids.pt", language=LanguageData("causal"))


def test_npy_of_floats(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.ones((2, 3)))
    with pytest.raises(ModeconnectError, match="holds float64 values; token ids must be integers"):
        load_data(tmp_path / "f.npy", language=LanguageData("causal"))


@pytest.mark.parametrize("name", ["ids.npy", "t.txt"])
def test_token_files_need_a_language_model(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    np.save(path, IDS.numpy()) if name.endswith(".npy") else path.write_text("hello")
    with pytest.raises(ModeconnectError, match="only a language model"):
        load_data(path)


def test_text_needs_a_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(hf.TEXT)
    with pytest.raises(ModeconnectError, match="tokenized with the checkpoint's tokenizer"):
        load_data(tmp_path / "t.txt", language=LanguageData("causal"))
    empty = tmp_path / "no_tokenizer"
    empty.mkdir()
    with pytest.raises(ModeconnectError, match="cannot load its tokenizer"):
        load_data(tmp_path / "t.txt", language=LanguageData("causal", tokenizer=empty))


def test_text_shorter_than_a_block(tmp_path: Path, tokenizer_dir: Path) -> None:
    (tmp_path / "t.txt").write_text("the cat")
    language = LanguageData("causal", tokenizer=tokenizer_dir, block_size=10)
    with pytest.raises(ModeconnectError, match="tokenizes to 2 tokens, fewer than one block of 10"):
        load_data(tmp_path / "t.txt", language=language)


def test_check_tokens() -> None:
    good = [(IDS, IDS)]
    check_tokens(good, "d", hf.VOCAB, 16)
    with pytest.raises(ModeconnectError, match=r"d: token ids \(40, 16\) hold 64, outside"):
        check_tokens([(IDS + 1 - IDS + 63, IDS)], "d", hf.VOCAB, 16)
    with pytest.raises(ModeconnectError, match="longer than the model's 8 positions"):
        check_tokens(good, "d", hf.VOCAB, 8)
    masked = IDS.clone()
    masked[:, 0] = -100
    check_tokens([(IDS, masked)], "d", hf.VOCAB, 16)  # ignored targets are fine


# --------------------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def causal_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("causal")
    a = hf.llama()
    return hf.save(a, root / "a", tokenizer=True), hf.save(hf.permuted_copy(a), root / "b")


def test_align_scores_a_causal_lm_with_perplexity(causal_pair, tmp_path: Path) -> None:
    a, b = causal_pair
    torch.save(IDS, tmp_path / "ids.pt")
    code, out, err = _cli("align", a, b, "--data", tmp_path / "ids.pt", "--steps", "3",
                          "--json", tmp_path / "r.json")  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    for curve in ("naive", "aligned"):
        points = report[curve]["curve"]
        assert [p["alpha"] for p in points] == [0.0, 0.5, 1.0]
        for p in points:
            assert p["perplexity"] == pytest.approx(math.exp(p["loss"]))
    assert "ppl at a=0.50" in out and "B: loss" in out and " ppl " in out.split("endpoints")[1]
    for curve in ("naive", "aligned"):
        assert report[curve]["barrier"]["perplexity"] >= 0  # the barrier in perplexity too
    naive, aligned = report["naive"]["curve"], report["aligned"]["curve"]
    assert aligned[-1]["loss"] == pytest.approx(naive[-1]["loss"], rel=1e-5)  # same function
    assert aligned[-1]["loss"] == pytest.approx(naive[0]["loss"], rel=1e-5)  # B is A permuted


def test_align_on_text_with_the_checkpoints_tokenizer(causal_pair, tmp_path: Path) -> None:
    a, b = causal_pair
    (tmp_path / "t.txt").write_text(hf.TEXT)
    code, _, err = _cli("align", a, b, "--data", tmp_path / "t.txt", "--block-size", "16",
                        "--steps", "2", "--json", tmp_path / "r.json")  # fmt: skip
    assert code == 0, err
    assert "perplexity" in json.loads((tmp_path / "r.json").read_text())["aligned"]["curve"][0]


def test_tokens_out_of_the_vocabulary_are_one_line(causal_pair, tmp_path: Path) -> None:
    a, b = causal_pair
    torch.save(IDS + hf.VOCAB, tmp_path / "ids.pt")
    code, _, err = _cli("align", a, b, "--data", tmp_path / "ids.pt")
    assert code == 2 and "outside the model's vocabulary [0, 64)" in err
    assert len(err.strip().splitlines()) == 1


def test_masked_lm_is_scored_on_a_seeded_mask(tmp_path: Path) -> None:
    model = hf.bert(head=True)
    a = hf.save(model, tmp_path / "a", tokenizer=True)
    b = hf.save(hf.permuted_copy(model), tmp_path / "b", tokenizer=True)
    (tmp_path / "t.txt").write_text(hf.TEXT)
    runs = []
    for name in ("r1.json", "r2.json"):
        code, _, err = _cli("align", a, b, "--data", tmp_path / "t.txt", "--block-size", "16",
                            "--steps", "2", "--json", tmp_path / name)  # fmt: skip
        assert code == 0, err
        runs.append(json.loads((tmp_path / name).read_text())["naive"]["curve"])
    assert runs[0] == runs[1]  # the same mask every run
    assert all(p["perplexity"] == pytest.approx(math.exp(p["loss"])) for p in runs[0])


def test_a_model_without_a_language_head_takes_no_token_files(tmp_path: Path) -> None:
    model = hf.bert()
    a, b = hf.save(model, tmp_path / "a"), hf.save(hf.permuted_copy(model), tmp_path / "b")
    np.save(tmp_path / "ids.npy", IDS.numpy())
    code, _, err = _cli("align", a, b, "--data", tmp_path / "ids.npy")
    assert code == 2 and "only a language model" in err
