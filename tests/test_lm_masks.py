"""A tokenizer's padded output as language-model data: the attention mask is honoured.

``--data`` (and :func:`~modeconnect.io.data.load_data`) takes the dict a Hugging Face
tokenizer returns, ``{"input_ids", "attention_mask"}`` (``labels``, ``token_type_ids``
optional). Padded positions are not scored and the model sees the mask, so every
sequence of a left- or right-padded batch scores as it does alone, unpadded; hostile
files are one-line refusals.
"""

from __future__ import annotations

import json
from pathlib import Path

import hf_models as hf
import numpy as np
import pytest
import torch
from hostile_bench import Bench, assert_refused
from torch import Tensor, nn

from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import IGNORE_INDEX, MaskedLMScoring, evaluate, evaluate_examples
from modeconnect.evaluation.scoring import PAD_LABEL, CausalLMScoring, token_batch
from modeconnect.forward import batch_inputs, model_call
from modeconnect.io.data import LanguageData, load_data

transformers = pytest.importorskip("transformers")

PAD = 1  # hf_models' tokenizer's [PAD]
LENGTHS = (5, 9, 3, 7)
SEQUENCES = [
    torch.randint(3, hf.VOCAB, (n,), generator=torch.Generator().manual_seed(n)) for n in LENGTHS
]


def _padded(side: str, sequences: list[Tensor] = SEQUENCES) -> dict[str, Tensor]:
    """What ``tokenizer(texts, padding=True, return_tensors="pt")`` returns, ``side``-padded."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), PAD)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, s in enumerate(sequences):
        where = slice(width - len(s), None) if side == "left" else slice(0, len(s))
        ids[i, where], mask[i, where] = s, 1
    return {"input_ids": ids, "attention_mask": mask}


def _gpt2() -> nn.Module:
    # Learned absolute positions: left padding scores right only with position_ids.
    config = transformers.GPT2Config(vocab_size=hf.VOCAB, n_positions=32, n_embd=16, n_layer=2,
                                     n_head=2, bos_token_id=0, eos_token_id=0)  # fmt: skip
    return hf._randomised(transformers.GPT2LMHeadModel(config), 0)


MODELS = {"llama": lambda: hf.llama(0), "gpt2": _gpt2}


def _token_losses(model: nn.Module, scoring, batch) -> tuple[Tensor, Tensor]:
    """Per-position losses ``(N, T')`` and the scored positions of one batch."""
    prepared = scoring.prepare(batch, 0)
    with torch.no_grad():
        out = model_call(model)(model, batch_inputs(prepared))
    target = prepared[1]
    return scoring.losses(out, target), target != IGNORE_INDEX


# --------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_padded_sequences_score_as_they_do_alone(name: str, side: str) -> None:
    model = MODELS[name]()
    scoring = CausalLMScoring()
    padded = _padded(side)
    losses, scored = _token_losses(
        model, scoring, token_batch(padded["input_ids"], padded["attention_mask"])
    )
    state = dict(model.state_dict())
    alone = []
    for i, seq in enumerate(SEQUENCES):
        single, counted = _token_losses(model, scoring, (seq[None], seq[None]))
        assert bool(counted.all())
        assert int(scored[i].sum()) == len(seq) - 1  # every next token, none of the padding
        torch.testing.assert_close(losses[i][scored[i]], single[0])
        alone.append(evaluate_examples(model, state, [(seq[None], seq[None])], loss="causal_lm"))
    # Per-example sums and entry counts (barriers, bootstrap) and the mean use the mask.
    examples = evaluate_examples(
        model, state, [token_batch(padded["input_ids"], padded["attention_mask"])], loss="causal_lm"
    )
    torch.testing.assert_close(examples.count, torch.cat([r.count for r in alone]))
    torch.testing.assert_close(examples.loss, torch.cat([r.loss for r in alone]))
    mean = evaluate(
        model, state, [token_batch(padded["input_ids"], padded["attention_mask"])], loss="causal_lm"
    ).loss
    expected = sum(float(r.loss.sum()) for r in alone) / sum(n - 1 for n in LENGTHS)
    assert mean == pytest.approx(expected, rel=1e-6)


def test_left_padding_needs_the_positions_the_mask_gives() -> None:
    """Without ``position_ids`` from the mask, GPT-2 scores left-padded sequences differently."""
    model, padded = _gpt2(), _padded("left")
    ids, mask = padded["input_ids"], padded["attention_mask"]
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        ours = model_call(model)(model, (ids, mask))
    short = len(SEQUENCES[0])
    with torch.no_grad():
        alone = model(input_ids=SEQUENCES[0][None]).logits[0]
    torch.testing.assert_close(ours[0, -short:], alone)
    assert not torch.allclose(plain[0, -short:], alone, atol=1e-3)


def test_a_mask_of_all_ones_is_the_plain_token_path() -> None:
    model = hf.llama(0)
    ids = torch.randint(0, hf.VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))
    batch = token_batch(ids, torch.ones_like(ids))
    assert batch[0] is batch[1]  # (ids, ids): nothing padded, nothing changes
    state = dict(model.state_dict())
    assert evaluate(model, state, [batch], loss="causal_lm") == evaluate(
        model, state, [(ids, ids)], loss="causal_lm"
    )
    with torch.no_grad():  # and the model given an all-ones mask agrees with none
        given = model_call(model)(model, (ids, torch.ones_like(ids)))
        torch.testing.assert_close(given, model_call(model)(model, (ids,)))


def test_a_masked_lm_scores_no_padding_and_sees_the_mask() -> None:
    model = hf.bert(0, head=True)
    scoring = MaskedLMScoring(mask_token_id=2, vocab_size=hf.VOCAB, probability=0.5)
    padded = _padded("right")
    prepared = scoring.prepare(token_batch(padded["input_ids"], padded["attention_mask"]), 0)
    (inputs, mask), target = prepared
    torch.testing.assert_close(mask, padded["attention_mask"])
    assert bool((target[mask == 0] == IGNORE_INDEX).all())
    assert bool((target != IGNORE_INDEX).any(dim=1).all())
    losses, scored = _token_losses(
        model, scoring, token_batch(padded["input_ids"], padded["attention_mask"])
    )
    for i, n in enumerate(LENGTHS):  # each row, run alone on its corrupted real tokens
        with torch.no_grad():
            alone = model_call(model)(model, (inputs[i : i + 1, :n],))
        single = scoring.losses(alone, target[i : i + 1, :n])[0]
        torch.testing.assert_close(losses[i][scored[i]], single[scored[i, :n]])


def test_labels_and_mask_make_one_target() -> None:
    ids = torch.tensor([[PAD, 5, 6, 7], [8, 9, 10, PAD]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    labels = ids.clone()
    labels[1, 1] = IGNORE_INDEX  # a real token, attended to, not scored
    x, y = token_batch(ids, mask, labels)
    assert y.tolist() == [[PAD_LABEL, 5, 6, 7], [8, IGNORE_INDEX, 10, PAD_LABEL]]
    inputs, target = CausalLMScoring().prepare((x, y), 0)
    assert inputs[1].tolist() == mask.long().tolist()
    assert target.tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 10, IGNORE_INDEX]]


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_a_tokenizer_output_file_loads(tmp_path: Path, suffix: str) -> None:
    padded = _padded("left")
    path = tmp_path / f"tokens{suffix}"
    if suffix == ".pt":
        torch.save({**padded, "token_type_ids": torch.zeros_like(padded["input_ids"])}, path)
    else:
        np.savez(path, input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
    batches = list(load_data(path, language=LanguageData("causal")))
    assert len(batches) == 1
    x, y = batches[0]
    torch.testing.assert_close(x, padded["input_ids"])
    assert y.tolist() == token_batch(padded["input_ids"], padded["attention_mask"])[1].tolist()


def test_a_real_tokenizer_output_loads(tmp_path: Path) -> None:
    directory = tmp_path / "tok"
    hf.save_tokenizer(directory)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    tokenizer.padding_side = "left"
    encoding = tokenizer(["the cat sat", "a bird flew over the tree"], padding=True,
                         return_tensors="pt")  # fmt: skip
    torch.save(dict(encoding), tmp_path / "tokens.pt")
    ((x, y),) = load_data(tmp_path / "tokens.pt", language=LanguageData("causal"))
    assert (y == PAD_LABEL).sum() == 3 and bool((y[:, 0] == PAD_LABEL)[0])


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ({"input_ids": torch.ones(2, 4, dtype=torch.long), "x": 1}, "unexpected key 'x'"),
        ({"input_ids": torch.ones(2, 4)}, "'input_ids' has dtype float32"),
        ({"input_ids": [[1, 2], [3, 4]]}, "'input_ids' is a list, not a tensor"),
        (
            {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 3)},
            "'attention_mask' has dtype float32",
        ),
        (
            {
                "input_ids": torch.ones(2, 4, dtype=torch.long),
                "labels": torch.full((2, 4), -5),
            },  # fmt: skip
            r"'labels' \(2, 4\) hold -5",
        ),
    ],
)
def test_bad_tokenizer_outputs(tmp_path: Path, content: dict, pattern: str) -> None:
    torch.save(content, tmp_path / "t.pt")
    with pytest.raises(ModeconnectError, match=pattern):
        load_data(tmp_path / "t.pt", language=LanguageData("causal"))


def test_a_tokenizer_output_needs_a_language_model(tmp_path: Path) -> None:
    torch.save(_padded("right"), tmp_path / "t.pt")
    with pytest.raises(ModeconnectError, match="holds a tokenizer's output"):
        load_data(tmp_path / "t.pt")


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    return hf.save(hf.llama(0), root / "a", tokenizer=True), hf.save(hf.llama(1), root / "b")


def _barrier(bench: Bench, pair, data: Path) -> dict:
    out = bench.root / f"{data.stem}.json"
    code, err = bench.cli("barrier", *pair, "--data", data, "--steps", "3", "--quiet",
                          "--json", out)()  # fmt: skip
    assert code == 0, err
    return json.loads(out.read_text())


def test_barrier_takes_a_tokenizer_dict(bench: Bench, pair) -> None:
    reports = {}
    for side in ("left", "right"):
        torch.save(_padded(side), bench.root / f"{side}.pt")
        reports[side] = _barrier(bench, pair, bench.root / f"{side}.pt")
    assert reports["left"]["examples"] == {"test": len(LENGTHS)}
    for end, seed in ((0, 0), (-1, 1)):  # the endpoints: each sequence scored alone, unpadded
        model = hf.llama(seed)
        state = dict(model.state_dict())
        alone = evaluate(model, state, [(s[None], s[None]) for s in SEQUENCES], loss="causal_lm")
        for side in ("left", "right"):
            point = reports[side]["naive"]["curve"][end]
            assert point["loss"] == pytest.approx(alone.loss, rel=1e-5)
            assert point["accuracy"] == pytest.approx(alone.accuracy)
    for key in ("loss", "error"):
        assert reports["left"]["naive"]["barrier"][key] == pytest.approx(
            reports["right"]["naive"]["barrier"][key], rel=1e-4, abs=1e-7
        )


def _tokens(**changes: object) -> dict:
    content: dict = dict(_padded("right"))
    content.update(changes)
    return {k: v for k, v in content.items() if v is not None}


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (
            _tokens(attention_mask=torch.ones(4, 8, dtype=torch.long)),
            "'attention_mask' has shape (4, 8) but 'input_ids' has shape (4, 9)",
        ),
        (_tokens(attention_mask=torch.full((4, 9), 2)), "'attention_mask' (4, 9) holds 2"),
        (_tokens(attention_mask=torch.zeros(4, 9, dtype=torch.long)), "is all 0 in row 0"),
        (_tokens(attention_mask=torch.ones(4, 9) * 0.5), "'attention_mask' has dtype float32"),
        (_tokens(special_tokens_mask=torch.zeros(4, 9)), "unexpected key 'special_tokens_mask'"),
        (_tokens(labels=torch.ones(4, 2, dtype=torch.long)), "'labels' has shape (4, 2)"),
        (_tokens(token_type_ids=torch.ones(4, 9, dtype=torch.long)), "second segment"),
        (_tokens(input_ids=torch.full((4, 9), hf.VOCAB + 3)), "outside the model's vocabulary"),
        (
            _tokens(attention_mask=torch.tensor([[1] * 9] * 3 + [[1] + [0] * 8])),
            "'attention_mask' row 3 holds 1 token",
        ),
        (_tokens(labels=torch.full((4, 9), IGNORE_INDEX)), "no position is scored"),
        (_tokens(input_ids=[[1, 2]]), "'input_ids' is a list, not a tensor"),
    ],  # fmt: skip
)
def test_hostile_tokenizer_outputs_are_one_line(bench: Bench, pair, content, expect) -> None:
    path = bench.root / "tokens.pt"
    torch.save(content, path)
    line = assert_refused(bench, bench.cli("barrier", *pair, "--data", path), expect)
    assert str(path) in line


def test_a_pickled_batch_encoding_is_refused_with_the_way_out(bench: Bench, pair) -> None:
    from transformers import BatchEncoding

    path = bench.root / "encoding.pt"
    torch.save(BatchEncoding(_padded("right")), path)
    assert_refused(bench, bench.cli("barrier", *pair, "--data", path), "dict(enc)")


def test_a_tokenizer_dict_for_a_classifier_is_one_line(bench: Bench) -> None:
    path = bench.root / "tokens.pt"
    torch.save(_padded("right"), path)
    assert_refused(bench, bench.cli("barrier", bench.a, bench.b, "--data", path),
                   "holds a tokenizer's output")  # fmt: skip
