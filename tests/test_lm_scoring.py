"""Language-model scorings: next-token and masked-token cross-entropy, perplexity, masks.

Tiny random Hugging Face models (GPT-2, Llama, BERT from small configs) and a plain
torch token model; every number is checked against ``F.cross_entropy`` on the
shifted (or masked) logits, computed by hand.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeconnect.barrier_studies import barrier_study
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import (
    IGNORE_INDEX,
    LOSSES,
    Barrier,
    MaskedLMScoring,
    barrier,
    evaluate,
    evaluate_examples,
    example_curve,
    get_scoring,
    interpolation_curve,
)
from modeconnect.evaluation.engine import Pass
from modeconnect.objective import loss_and_gradient

transformers = pytest.importorskip("transformers")

VOCAB, T = 40, 12


def _tiny(model: str, seed: int, **config: Any) -> nn.Module:
    """``transformers.<model>`` from a tiny config over ``VOCAB`` tokens, weights of ``seed``."""
    torch.manual_seed(seed)
    cls = getattr(transformers, model)
    return cls(cls.config_class(vocab_size=VOCAB, **config)).eval()


# _gpt2(seed), _llama(seed), _bert(seed); BERT's mask_token_id is what the HF directory loader
# copies from the tokenizer.
_gpt2 = partial(_tiny, "GPT2LMHeadModel", n_positions=16, n_embd=16, n_layer=2, n_head=2,
                bos_token_id=0, eos_token_id=0)  # fmt: skip
_llama = partial(_tiny, "LlamaForCausalLM", hidden_size=16, intermediate_size=32,
                 num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                 max_position_embeddings=16)  # fmt: skip
_bert = partial(_tiny, "BertForMaskedLM", hidden_size=16, num_hidden_layers=1,
                num_attention_heads=2, intermediate_size=32, max_position_embeddings=16,
                mask_token_id=3)  # fmt: skip


class _TokenNet(nn.Module):
    """A plain torch token model, ids ``(N, T)`` -> logits ``(N, T, V)``: ``vmap`` batches it."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, 8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embed(ids)
        h = h + torch.cumsum(h, dim=1) / torch.arange(1, ids.shape[1] + 1).unsqueeze(-1)
        return self.head(torch.tanh(self.mix(h)))


def _tokens(seed: int = 0, batches: int = 3, n: int = 4) -> list[tuple[Tensor, Tensor]]:
    """Token batches as the data layer writes them: ``(ids, ids)``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        ids = torch.randint(5, VOCAB, (n, T), generator=g)
        out.append((ids, ids))
    return out


def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, Tensor) else out.logits


def _clone(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- causal LM


@pytest.mark.parametrize("build", [_gpt2, _llama, _TokenNet], ids=["gpt2", "llama", "plain"])
def test_causal_lm_loss_is_next_token_cross_entropy(build) -> None:
    model, data = build(0), _tokens()
    logits = torch.cat([_logits(model, ids)[:, :-1] for ids, _ in data])
    targets = torch.cat([ids[:, 1:] for ids, _ in data])
    want = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)).item()
    hits = (logits.argmax(-1) == targets).double().mean().item()

    got = evaluate(model, model.state_dict(), data, loss="causal_lm")
    torch.testing.assert_close(got.loss, want, rtol=1e-5, atol=0.0)
    assert got.accuracy == hits and got.perplexity == math.exp(got.loss)

    per = evaluate_examples(model, model.state_dict(), data, loss="causal_lm")
    assert torch.equal(per.count, torch.full((12,), T - 1.0, dtype=torch.float64))
    torch.testing.assert_close(per.metrics().loss, want, rtol=1e-5, atol=0.0)
    assert per.metrics().accuracy == hits and per.per_token
    rows = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").sum(1)
    torch.testing.assert_close(per.loss, rows.double(), rtol=1e-5, atol=1e-6)


def test_causal_lm_skips_ignored_labels_and_reads_none_as_the_ids() -> None:
    model = _gpt2(0)
    ids = _tokens(batches=1)[0][0]
    labels = ids.clone()
    labels[:, -3:] = IGNORE_INDEX  # padding: not scored
    logits = _logits(model, ids)[:, :-1]
    keep = labels[:, 1:] != IGNORE_INDEX
    want = F.cross_entropy(logits[keep], labels[:, 1:][keep]).item()
    got = evaluate_examples(model, model.state_dict(), [(ids, labels)], loss="causal_lm")
    assert torch.equal(got.count, torch.full((4,), T - 1.0 - 3.0, dtype=torch.float64))
    torch.testing.assert_close(got.metrics().loss, want, rtol=1e-5, atol=0.0)
    same = evaluate(model, model.state_dict(), [(ids, None)], loss="causal_lm")
    assert same == evaluate(model, model.state_dict(), [(ids, ids)], loss="causal_lm")


def test_causal_lm_self_barrier_is_exactly_zero_and_study_reports_perplexity() -> None:
    model = _gpt2(0)
    a, b = model.state_dict(), _clone(model)
    study = barrier_study(model, a, b, test=_tokens(), align=None, steps=3, loss="causal_lm")
    test = study.naive.test
    for bar in test.barriers.values():
        assert (bar.loss, bar.error) == (0.0, 0.0)
    out = study.to_dict()
    assert out["loss"] == "causal_lm"
    mid = out["naive"]["midpoint"]
    assert mid["perplexity"] == math.exp(mid["loss"]) and mid["error"] == 1 - mid["accuracy"]
    assert all(p["perplexity"] == math.exp(p["loss"]) for p in out["naive"]["curve"])


def test_causal_lm_curve_endpoints_equal_evaluate_exactly() -> None:
    model, other, data = _llama(0), _llama(1), _tokens()
    a, b = model.state_dict(), other.state_dict()
    curve = interpolation_curve(model, a, b, data, steps=3, loss="causal_lm")
    for point, sd in ((curve.points[0], a), (curve.points[-1], b)):
        m = evaluate(model, sd, data, loss="causal_lm")
        assert (point.loss, point.accuracy, point.perplexity) == (m.loss, m.accuracy, m.perplexity)
    assert curve.to_dict()[1]["perplexity"] == math.exp(curve.points[1].loss)
    assert barrier(curve).loss > 0.0


def test_causal_lm_stacked_alphas_match_one_by_one() -> None:
    model, other, data = _TokenNet(0), _TokenNet(1), _tokens()
    a, b = model.state_dict(), other.state_dict()
    one = example_curve(model, a, b, data, steps=6, loss="causal_lm", alpha_batch=1)
    many = example_curve(model, a, b, data, steps=6, loss="causal_lm", alpha_batch=4)
    for x, y in zip(one.results, many.results, strict=True):
        torch.testing.assert_close(x.loss, y.loss, rtol=1e-5, atol=1e-6)
        assert torch.equal(x.count, y.count)


def test_causal_lm_gradient_objective() -> None:
    model, data = _gpt2(0), _tokens()
    state = model.state_dict()
    key = "transformer.h.0.mlp.c_fc.weight"
    value, grads = loss_and_gradient(model, state, [key], data, loss="causal_lm")
    torch.testing.assert_close(value, evaluate(model, state, data, loss="causal_lm").loss)
    assert grads[key].shape == state[key].shape and bool(grads[key].abs().sum() > 0)


# --------------------------------------------------------------------------- masked LM


def test_masked_lm_mask_is_seeded_exact_and_bert_style() -> None:
    scoring = MaskedLMScoring(mask_token_id=3, vocab_size=VOCAB, seed=7)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (400, 50), generator=g)
    inputs, target = scoring.prepare((ids, ids), 0)
    again = scoring.prepare((ids, ids), 0)
    assert torch.equal(inputs, again[0]) and torch.equal(target, again[1])
    other_batch = scoring.prepare((ids, ids), 1)
    other_seed = MaskedLMScoring(mask_token_id=3, vocab_size=VOCAB, seed=8).prepare((ids, ids), 0)
    assert not torch.equal(target, other_batch[1]) and not torch.equal(target, other_seed[1])
    chosen = target != IGNORE_INDEX
    assert torch.equal(chosen.sum(1), torch.full((400,), round(0.15 * 50)))  # 8 per row
    assert torch.equal(target[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    masked = (inputs[chosen] == 3).double().mean().item()
    kept = (inputs[chosen] == ids[chosen]).double().mean().item()
    assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1 - 0.1 / VOCAB) < 0.03


def test_masked_lm_leaves_ignored_positions_alone() -> None:
    scoring = MaskedLMScoring(mask_token_id=3, vocab_size=VOCAB)
    ids = _tokens(batches=1)[0][0]
    labels = ids.clone()
    labels[0, :] = IGNORE_INDEX  # a sequence of padding only
    labels[1, 4:] = IGNORE_INDEX  # four scorable positions: one chosen
    inputs, target = scoring.prepare((ids, labels), 0)
    assert torch.equal(inputs[0], ids[0]) and bool((target[0] == IGNORE_INDEX).all())
    assert int((target[1] != IGNORE_INDEX).sum()) == 1 and bool((target[1, 4:] == -100).all())


def test_masked_lm_loss_is_masked_token_cross_entropy() -> None:
    model, data = _bert(0), _tokens()
    scoring = get_scoring("masked_lm", model)
    assert isinstance(scoring, MaskedLMScoring)
    assert (scoring.mask_token_id, scoring.vocab_size) == (3, VOCAB)
    prepared = [scoring.prepare(batch, i) for i, batch in enumerate(data)]
    logits = torch.cat([_logits(model, x) for x, _ in prepared])
    target = torch.cat([t for _, t in prepared])
    want = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1)).item()  # ignores -100
    got = evaluate_examples(model, model.state_dict(), data, loss="masked_lm")
    torch.testing.assert_close(got.metrics().loss, want, rtol=1e-5, atol=0.0)
    assert int(got.count.sum()) == int((target != IGNORE_INDEX).sum()) == 12 * 2
    assert got.metrics().perplexity == math.exp(got.metrics().loss)


def test_masked_lm_self_barrier_is_exactly_zero() -> None:
    model = _bert(0)
    a, b = model.state_dict(), _clone(model)
    curve = example_curve(model, a, b, _tokens(), steps=5, loss="masked_lm", alpha_batch=3)
    assert barrier(curve.curve()) == Barrier(0.0, 0.0, "lerp")
    study = barrier_study(
        model, a, b, test=_tokens(), align=None, steps=3, loss="masked_lm", bootstrap=20
    )
    for bar in study.naive.test.barriers.values():
        assert (bar.loss, bar.error) == (0.0, 0.0)
    assert study.naive.bootstrap["lerp"].loss.high == 0.0


def test_masked_lm_stacked_alphas_draw_one_mask() -> None:
    scoring = MaskedLMScoring(mask_token_id=3)  # the vocabulary comes from the embedding
    model, other, data = _TokenNet(0), _TokenNet(1), _tokens()
    a, b = model.state_dict(), other.state_dict()
    runner = Pass.of(model, get_scoring(scoring, model), per_example=True)
    with torch.no_grad():  # vmap draws the mask once for all states (randomness="same")
        stacked = runner.run_stacked([a, b], data)
        singles = [runner.run(a, data), runner.run(b, data)]
    for j, single in enumerate(singles):
        assert torch.equal(stacked[2][j], single[2])  # the same masked positions
        torch.testing.assert_close(stacked[0][j], single[0], rtol=1e-5, atol=1e-6)
    one = example_curve(model, a, b, data, steps=6, loss=scoring, alpha_batch=1)
    many = example_curve(model, a, b, data, steps=6, loss=scoring, alpha_batch=4)
    for x, y in zip(one.results, many.results, strict=True):
        torch.testing.assert_close(x.loss, y.loss, rtol=1e-5, atol=1e-6)
        assert torch.equal(x.count, y.count)


# --------------------------------------------------------------------------- errors


def test_language_model_scorings_explain_what_is_wrong() -> None:
    gpt2 = _gpt2(0)
    sd = gpt2.state_dict()
    floats = [(torch.randn(2, T), torch.randn(2, T))]
    with pytest.raises(ModeconnectError, match=r"causal_lm: a token batch is \(ids \(N, T\) long"):
        evaluate(gpt2, sd, floats, loss="causal_lm")
    flat = nn.Sequential(nn.Embedding(VOCAB, 3), nn.Flatten())  # (N, T) -> (N, 3T)
    ids = torch.randint(VOCAB, (2, 4))
    with pytest.raises(ModeconnectError, match=r"causal_lm: the model returned \(2, 12\) float32"):
        evaluate(flat, flat.state_dict(), [(ids, None)], loss="causal_lm")
    plain_bert = _bert(0)
    plain_bert.config.mask_token_id = None
    with pytest.raises(ModeconnectError, match="masked_lm: BertForMaskedLM's config has no mask"):
        evaluate(plain_bert, plain_bert.state_dict(), _tokens(), loss="masked_lm")
    with pytest.raises(ModeconnectError, match="probability=0.0 is not in"):
        MaskedLMScoring(probability=0.0)
    with pytest.raises(ModeconnectError, match="both loss and loss_fn"):
        evaluate(gpt2, sd, _tokens(), loss_fn=lambda z, y: z.sum(), loss="causal_lm")
    assert LOSSES["causal_lm"].per_token and not LOSSES["ce"].per_token
