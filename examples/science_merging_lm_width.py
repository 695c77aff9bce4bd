"""Fusing tiny Llama language models of different widths, without retraining.

Corpus and tokenizer: those of ``examples/tiny_lms.py`` (the CPython standard library's
sources, a 2048-token byte-level BPE, files whose name hashes to 0 mod 10 held out).
Three ``LlamaForCausalLM`` models (2 layers, head dimension 16, AdamW on random
128-token windows, as ``tiny_lms.py`` trains them) are trained from their own seeds:

* A: hidden size 64, 4 heads, MLP width 176;
* B: hidden size 96, 6 heads, MLP width 256 (every width 1.5× A's);
* C: A's shape, another seed (the same-width reference, where a plain average exists).

Three such triples are trained, from seeds (0, 1, 2), (3, 4, 5) and (6, 7, 8): every row
is the mean ± sample standard deviation (n − 1) over the three of them.

A and B are fused with ``modeconnect.fusion.fuse`` at A's widths and at B's (the
residual stream, the heads and the MLPs all change width together), by OT fusion
(soft) and ZipIt!, from the activations of 16 training windows. Each model is scored by
next-token cross-entropy (nats per token) and perplexity on held-out 128-token blocks,
against each parent and the ensemble (mean of the two models' next-token
probabilities). A and C (one width) are fused the same way and plainly averaged. No
equivalence guard applies to a fused model: it is the evaluated object.

    python examples/science_merging_lm_width.py --out results
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from science_common import pm, summarise_pairs, table  # noqa: E402
from tiny_lms import CONTEXT, VOCAB, corpus, tokenizer  # noqa: E402
from tiny_lms import train as train_lm  # noqa: E402

from modeconnect.fusion import fuse  # noqa: E402
from modeconnect.provenance import write_result  # noqa: E402

HEAD_DIM = 16
SHAPES = {"A": (64, 176, 0), "B": (96, 256, 1), "C": (64, 176, 2)}
"""Each model's hidden size, MLP width and seed (of the first triple)."""
TRIPLES = ((0, 1, 2), (3, 4, 5), (6, 7, 8))
"""The seeds of A, B and C in each of the three runs."""


def llama(hidden: int, inter: int, seed: int = 0) -> torch.nn.Module:
    """A 2-layer tiny Llama of hidden size ``hidden`` (heads of dimension 16)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    heads = hidden // HEAD_DIM
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=2, num_attention_heads=heads, head_dim=HEAD_DIM,
                         num_key_value_heads=heads, max_position_embeddings=CONTEXT,
                         tie_word_embeddings=False)  # fmt: skip
    config.use_cache = False
    return LlamaForCausalLM(config)


def blocks(ids: torch.Tensor, count: int) -> list[torch.Tensor]:
    """The first ``count`` non-overlapping ``(8, CONTEXT)`` batches of ``ids``."""
    n = CONTEXT * 8
    return [ids[i * n : (i + 1) * n].view(8, CONTEXT) for i in range(min(count, len(ids) // n))]


@torch.no_grad()
def log_probs(model: torch.nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each batch's next-token log-probabilities of the actual next tokens."""
    out = []
    for x in batches:
        logp = torch.log_softmax(model.eval()(x).logits[:, :-1].double(), -1)
        out.append(logp.gather(-1, x[:, 1:, None])[..., 0])
    return out


def scored(logp: list[torch.Tensor]) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) and perplexity."""
    loss = -float(torch.cat([t.reshape(-1) for t in logp]).mean())
    return {"loss": loss, "perplexity": math.exp(loss)}


def fused_model(sd: dict[str, torch.Tensor], hidden: int, inter: int) -> torch.nn.Module:
    net = llama(hidden, inter)
    net.load_state_dict(sd)
    return net


def run(
    steps: int,
    heldout_batches: int,
    cache: Path | None = None,
    triples: tuple[tuple[int, int, int], ...] = TRIPLES,
) -> dict[str, Any]:
    """Train (or read from ``cache``) each triple's three models, fuse them, score every
    row; the rows are the mean ± sample standard deviation over the triples."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    text, held = corpus(3_000_000)
    with tempfile.TemporaryDirectory() as folder:
        tok = tokenizer(text, Path(folder))
    ids = torch.tensor(tok(text)["input_ids"], dtype=torch.long)
    test = blocks(torch.tensor(tok(held)["input_ids"], dtype=torch.long), heldout_batches)
    gen = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(ids) - CONTEXT, (16 * 4,), generator=gen).tolist()
    windows = torch.stack([ids[s : s + CONTEXT] for s in starts])
    stats = [(w, w) for w in windows.split(4)]
    runs, trained = [], 0.0
    for seeds in triples:
        begin = time.perf_counter()
        nets = {name: trained_llama(name, seed, ids, steps, cache)
                for name, seed in zip(SHAPES, seeds, strict=True)}  # fmt: skip
        trained += time.perf_counter() - begin
        rows = triple_rows(nets, test, stats)
        runs += [{"seeds": list(seeds), "row": name, **row} for name, row in rows.items()]
    summary = {r.pop("row"): r for r in summarise_pairs(runs, ["row"])}
    return {
        "rows": summary,
        "runs": runs,
        "triples": [list(t) for t in triples],
        "shapes": {
            n: {
                "hidden_size": h,
                "intermediate_size": i,
                "heads": h // HEAD_DIM,
                "head_dim": HEAD_DIM,
                "seeds": [t[j] for t in triples],
            }
            for j, (n, (h, i, _)) in enumerate(SHAPES.items())
        },  # fmt: skip
        "training_steps": steps,
        "heldout_tokens": sum(x.numel() for x in test),
        "statistics_windows": len(windows),
        "train_seconds": trained,
        "total_seconds": time.perf_counter() - started,
        "equivalence_guard": "not applicable: each fused model is the evaluated object",
    }


def trained_llama(
    name: str, seed: int, ids: torch.Tensor, steps: int, cache: Path | None
) -> torch.nn.Module:
    """Model ``name``'s shape trained from ``seed`` (or read from ``cache``), in eval mode."""
    hidden, inter, _ = SHAPES[name]
    net = llama(hidden, inter, seed)
    stored = cache / f"{name}_{seed}_{steps}.pt" if cache is not None else None
    if stored is not None and stored.exists():
        net.load_state_dict(torch.load(stored, weights_only=True))
    else:
        train_lm(net, ids, seed, steps, batch=16)
        if stored is not None:
            stored.parent.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), stored)
    print(f"trained {name} ({hidden}, {inter}) from seed {seed}", flush=True)
    return net.eval()


def triple_rows(
    nets: dict[str, torch.nn.Module], test: list[torch.Tensor], stats: list[Any]
) -> dict[str, dict[str, float]]:
    """Every row of the table for one triple A, B, C."""
    sds = {n: {k: v.detach().clone() for k, v in net.state_dict().items()}
           for n, net in nets.items()}  # fmt: skip
    logp = {name: log_probs(net, test) for name, net in nets.items()}
    rows: dict[str, dict[str, float]] = {n: scored(logp[n]) for n in SHAPES}

    def ensemble(a: str, b: str) -> dict[str, float]:
        mix = [torch.logaddexp(x, y) - math.log(2) for x, y in zip(logp[a], logp[b], strict=True)]
        return scored(mix)

    rows["ensemble A+B"] = ensemble("A", "B")
    rows["ensemble A+C"] = ensemble("A", "C")
    for at in ("A", "B"):
        hidden, inter, _ = SHAPES[at]
        models = [nets[at], nets["B" if at == "A" else "A"]]
        states = [sds[at], sds["B" if at == "A" else "A"]]
        for method, options in (("otfusion", {"transport": "soft"}), ("zip", {})):
            begin = time.perf_counter()
            out = fuse(models, states, data=stats, method=method, **options)
            net = fused_model(out.state_dict, hidden, inter)
            rows[f"A+B {method} at {at}'s width"] = {
                **scored(log_probs(net, test)), "seconds": time.perf_counter() - begin,
            }  # fmt: skip
    hidden, inter, _ = SHAPES["A"]
    average = {k: (sds["A"][k] + sds["C"][k]) / 2 for k in sds["A"]}
    rows["A+C plain average"] = scored(log_probs(fused_model(average, hidden, inter), test))
    for method in ("otfusion", "zip"):
        out = fuse([nets["A"], nets["C"]], [sds["A"], sds["C"]], data=stats, method=method)
        rows[f"A+C {method}"] = scored(log_probs(fused_model(out.state_dict, hidden, inter), test))
    return rows


ROWS = (
    "A", "B", "C", "ensemble A+B", "ensemble A+C",
    *(f"A+B {m} at {w}'s width" for w in "AB" for m in ("otfusion", "zip")),
    "A+C plain average", "A+C otfusion", "A+C zip",
)  # fmt: skip
"""The rows of the table, in order."""


def report(numbers: dict[str, Any]) -> str:
    """The table of docs/science/merging.md's LM width-fusion section (stored result)."""
    rows = numbers["rows"]
    return table(
        [[name, pm(rows[name], "loss", ".3f"), pm(rows[name], "perplexity", ".1f")]
         for name in ROWS],
        ["model", "loss (nats/token)", "perplexity"],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="folder of the stored result")
    parser.add_argument("--quick", action="store_true", help="a tiny run for the tests")
    parser.add_argument("--cache", type=Path, help="keep the trained models here and reuse them")
    args = parser.parse_args(argv)
    steps, batches = (20, 2) if args.quick else (400, 12)
    numbers = run(steps, batches, args.cache, TRIPLES[:1] if args.quick else TRIPLES)
    print(report(numbers))
    if not args.quick:
        write_result(args.out / "merging_lm_width.json", numbers, seeds=list(range(9)),
                     command=["python", "examples/science_merging_lm_width.py", "--out",
                              str(args.out)])  # fmt: skip
    return numbers


if __name__ == "__main__":
    main()
