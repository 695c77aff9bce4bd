"""Transformers beyond permutations: the midpoint loss barrier under each symmetry and solver.

Two tiny Llamas (``examples/tiny_lms.py``'s corpus, tokenizer, model and training:
CPython's standard library, byte-level BPE of 2048 tokens, hidden 128) trained from
different seeds, and optionally two tiny GPT-2s (LayerNorm, GELU, learned positions,
untied head) trained the same way. For each, on held-out 128-token blocks, the loss at
α = 0.5 and its barrier ``L(½A + ½B') − ½(L(A) + L(B))`` (nats per token), with the
seconds of the alignment:

* naive (no alignment);
* permutation: weight matching, and activation matching (``--symmetry permutation``);
* orthogonal, weight-based: Procrustes on the residual stream alternating with weight
  matching; activation-based: Procrustes on the residual stream's activations;
* full: the same, then invertible per-head V·O maps and Q·K maps that commute with RoPE
  (least squares on the weights); and without the Q·K maps, to measure them;
* full, learned: the rotation learned on the midpoint loss over train blocks, then V·O.

Run: ``python benchmarks/bench_symmetry.py --out results/transformers_symmetry.json``
(``--quick``: a smoke run of a few minutes). It prints the table with each row's share
of the naive barrier and its time relative to weight matching.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import tiny_lms  # noqa: E402

import modeconnect as mc  # noqa: E402
from modeconnect.forward import run  # noqa: E402
from modeconnect.provenance import write_result  # noqa: E402
from modeconnect.symmetry.procrustes import normalised  # noqa: E402


def gpt2(seed: int, layers: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=tiny_lms.VOCAB, n_embd=128, n_layer=layers, n_head=4,
                        n_positions=tiny_lms.CONTEXT, tie_word_embeddings=False,
                        bos_token_id=0, eos_token_id=0)  # fmt: skip
    config.use_cache = False
    return GPT2LMHeadModel(config)


def blocks(ids: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, len(ids) - tiny_lms.CONTEXT, (n,), generator=gen)
    return torch.stack([ids[s : s + tiny_lms.CONTEXT] for s in start.tolist()])


def midpoint_loss(model: torch.nn.Module, a: Any, b: Any, data: list[Any]) -> dict[str, float]:
    curve = mc.interpolation_curve(model, a, b, data, alphas=[0.0, 0.5, 1.0], loss="causal_lm")
    losses = [p.loss for p in curve.points]
    return {"loss_a": losses[0], "loss_mid": losses[1], "loss_b": losses[2],
            "barrier": losses[1] - 0.5 * (losses[0] + losses[2]),
            "perplexity_mid": float(torch.tensor(losses[1]).exp())}  # fmt: skip


def norm_kinds(model: torch.nn.Module) -> dict[str, str]:
    """Each norm module's name and how it normalises: ``"layernorm"`` or ``"rmsnorm"``."""
    kinds = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            kinds[name] = "layernorm"
        elif type(module).__name__.endswith("RMSNorm") or isinstance(module, torch.nn.RMSNorm):
            kinds[name] = "rmsnorm"
    return kinds


def similarity(model: torch.nn.Module, a: Any, b: Any, data: list[Any]) -> dict[str, Any]:
    """How near B is to A (``--similarity``), per norm and as the mean over the norms.

    At each norm's input, each token of the residual stream normalised as the norm
    normalises it (what the readers see):

    * ``stream_cosine``: the mean over tokens of the cosine between A's and B's stream
      (the activation Procrustes maximises its sum);
    * ``stream_overlap``: ``tr(C_A C_B) / (‖C_A‖ ‖C_B‖)`` of the two streams' second
      moments ``C``: 1 when B's stream fills the directions A's fills, in the same
      proportions, near 0 when it keeps to the others;
    * ``stream_rank``: the participation ratio ``tr(C)² / tr(C²)`` of A's and of B's
      stream (the number of directions a stream effectively fills; a rotation leaves it);

    and over the floating tensors, ``weight_distance``: ``Σ‖W_A − W_B‖² / Σ(‖W_A‖² +
    ‖W_B‖²)`` (what weight matching and the weight Procrustes minimise).
    """
    kinds = norm_kinds(model)

    def streams(state: Any) -> dict[str, torch.Tensor]:
        seen: dict[str, list[torch.Tensor]] = {name: [] for name in kinds}
        handles = []
        for name, kind in kinds.items():

            def hook(_m: Any, args: Any, name: str = name, kind: str = kind) -> None:
                x = args[0].detach().double().reshape(-1, args[0].shape[-1])
                seen[name].append(normalised(x, kind))

            handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
        try:
            with torch.no_grad():
                for batch in data:
                    run(model, state, (batch[0],))
        finally:
            for h in handles:
                h.remove()
        return {name: torch.cat(xs) for name, xs in seen.items()}

    def rank(c: torch.Tensor) -> float:
        return float(c.trace() ** 2 / (c * c).sum())

    sa, sb = streams(a), streams(b)
    out: dict[str, Any] = {"stream_cosine": {}, "stream_overlap": {}, "stream_rank": {}}
    for name in kinds:
        x, y = sa[name], sb[name]
        ca, cb = x.T @ x / len(x), y.T @ y / len(y)
        out["stream_cosine"][name] = float((x * y).mean(1).mean())
        out["stream_overlap"][name] = float((ca * cb).sum() / (ca.norm() * cb.norm()))
        out["stream_rank"][name] = [rank(ca), rank(cb)]
    for key in ("stream_cosine", "stream_overlap"):
        out[f"{key}_mean"] = sum(out[key].values()) / len(kinds)
    out["stream_rank_mean"] = [sum(r[i] for r in out["stream_rank"].values()) / len(kinds)
                               for i in (0, 1)]  # fmt: skip
    keys = [k for k in a if a[k].is_floating_point() and a[k].shape == b[k].shape]
    apart = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in keys)
    total = sum(float(a[k].double().pow(2).sum() + b[k].double().pow(2).sum()) for k in keys)
    return {**out, "weight_distance": apart / total}


def runs(args: Any) -> list[tuple[str, dict[str, Any]]]:
    """Each row's label and :func:`modeconnect.align` keywords, in the order they run."""
    learn = dict(epochs=args.epochs, lr=args.lr)
    lsq = dict(max_condition=100.0)  # least-squares heads (the default before 0.4.0's end)
    return [
        ("permutation, weight", dict(method="weight")),
        ("permutation, activation", dict(method="activation")),
        ("orthogonal, weight", dict(method="weight", symmetry="orthogonal")),
        ("orthogonal, activation", dict(method="activation", symmetry="orthogonal")),
        # "full" rows keep the meaning they had when first stored: least-squares heads
        ("full, weight", dict(method="weight", symmetry="full", **lsq)),
        (
            "full (V·O only, no Q·K), weight",
            dict(method="weight", symmetry="full", qk=False, **lsq),
        ),
        (
            "full (orthogonal heads, no Q·K), weight",
            dict(method="weight", symmetry="full", max_condition=1.0, qk=False),
        ),
        (
            "full (orthogonal heads), weight",
            dict(method="weight", symmetry="full", max_condition=1.0),
        ),
        (
            "full (orthogonal Q·K), weight",
            dict(method="weight", symmetry="full", qk_condition=1.0, **lsq),
        ),
        ("full, activation", dict(method="activation", symmetry="full", **lsq)),
        ("full (orthogonal heads), activation", dict(method="activation", symmetry="full")),
        (
            "full (activation-fitted heads), activation",
            dict(method="activation", symmetry="full", head_maps="activations"),
        ),
        ("orthogonal, learned", dict(method="learned", symmetry="orthogonal", **learn)),
        ("full, learned", dict(method="learned", symmetry="full", heads="fixed", **learn, **lsq)),
        (
            "orthogonal, learned + STE permutations",
            dict(method="learned", symmetry="orthogonal", permutations="ste", **learn),
        ),
        (
            "orthogonal, learned two-sided",
            dict(method="learned", symmetry="orthogonal", sides="two", **learn),
        ),
        (
            "full (orthogonal heads), learned",
            dict(method="learned", symmetry="full", heads="fixed", **learn),
        ),
        (
            "full, learned heads",
            dict(method="learned", symmetry="full", heads="learned", **learn),
        ),
        (
            "full, learned heads + STE permutations",
            dict(method="learned", symmetry="full", heads="learned", permutations="ste", **learn),
        ),
        (
            "full, learned heads + Sinkhorn permutations",
            dict(
                method="learned", symmetry="full", heads="learned", permutations="sinkhorn", **learn
            ),
        ),
    ]


def aligned_rows(
    name: str, model: torch.nn.Module, a: Any, b: Any, train: list[Any], test: list[Any],
    args: Any, measure: Any, loss: str | None,
) -> dict[str, Any]:  # fmt: skip
    """Each row of :func:`runs` (``--only`` ones, and weight matching): ``measure(result)``
    with the seconds of the alignment, whether the guard passed and the classes found."""
    rows: dict[str, Any] = {}
    for label, kw in [
        r for r in runs(args) if not args.only or r[0] in {*args.only, "permutation, weight"}
    ]:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = mc.align(model, a, b, data=train, inputs=(test[0][0][:2],), loss=loss, **kw)
        seconds = time.perf_counter() - start
        rows[label] = {**measure(result), "seconds": seconds,
                       "guard_passed": result.equivalence.passed}  # fmt: skip
        if result.symmetry is not None:
            rows[label]["classes"] = {g["group"]: g["class"] for g in result.symmetry["groups"]
                                      if g["class"] != "permutation"}  # fmt: skip
        print(f"{name} {label}: barrier {rows[label]['barrier']:.3f} ({seconds:.1f} s)", flush=True)
    return rows


def study(
    name: str, make: Any, ids: torch.Tensor, held: torch.Tensor, args: Any,
    seeds: tuple[int, int] = (0, 1),
) -> dict[str, Any]:  # fmt: skip
    """Every row of :func:`runs` on the pair trained from ``seeds`` (kept under
    ``--models``: ``NAME_a.pt``/``NAME_b.pt`` for seeds 0 and 1, ``NAME_seedS.pt`` else)."""
    nets = {}
    for tag, seed in zip("ab", seeds, strict=True):
        net = make(seed, args.layers)
        stem = f"{name}_{tag}" if seeds == (0, 1) else f"{name}_seed{seed}"
        saved = None if args.models is None else args.models / f"{stem}.pt"
        if saved is not None and saved.exists():
            net.load_state_dict(torch.load(saved, weights_only=True))
            nets[tag] = net.eval()
            print(f"{name} {tag}: loaded {saved}", flush=True)
            continue
        start = time.perf_counter()
        last = tiny_lms.train(net, ids, seed, args.steps, batch=16)
        print(f"{name} {tag}: trained {args.steps} steps, last loss {last:.3f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        nets[tag] = net.eval()
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), saved)
    model = nets["a"]
    a, b = nets["a"].state_dict(), nets["b"].state_dict()
    test = [(x, x) for x in blocks(held, args.eval_blocks, 2).split(8)]
    train = [(x, x) for x in blocks(ids, args.train_blocks, 3).split(8)]

    def scores(x: Any, y: Any) -> dict[str, Any]:
        near = similarity(model, x, y, test) if args.similarity else {}
        return {**midpoint_loss(model, x, y, test), **near}

    rows: dict[str, Any] = {"naive": {**scores(a, b), "seconds": 0.0}}

    def measure(result: Any) -> dict[str, Any]:
        return scores(result.start(a), result.aligned)

    rows.update(aligned_rows(name, model, a, b, train, test, args, measure, "causal_lm"))
    naive, weight_seconds = rows["naive"]["barrier"], rows["permutation, weight"]["seconds"]
    for row in rows.values():
        row["share_of_naive"] = row["barrier"] / naive if naive else None
        row["time_vs_weight_matching"] = row["seconds"] / weight_seconds
    return rows


SUMMED = (
    "barrier",
    "share_of_naive",
    "stream_cosine_mean",
    "stream_overlap_mean",
    "weight_distance",
)
"""The numbers :func:`summary` takes the mean and sd of, where every pair has them."""


def summary(pairs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per row run on every pair: the mean and sample standard deviation of the barrier,
    of its share of the naive one (and of :func:`similarity`'s numbers, if measured), and
    the number of pairs."""
    common = [k for k in next(iter(pairs.values())) if all(k in p for p in pairs.values())]
    out = {}
    for label in common:
        row: dict[str, Any] = {"pairs": len(pairs)}
        for key in [k for k in SUMMED if all(k in p[label] for p in pairs.values())]:
            values = torch.tensor([p[label][key] for p in pairs.values()], dtype=torch.float64)
            sd = float(values.std()) if len(values) > 1 else 0.0
            row[key], row[f"{key}_sd"] = float(values.mean()), sd
        out[label] = row
    return out


PAIR_TITLES = {"llama": "Tiny Llamas", "gpt2": "Tiny GPT-2s", "vit": "Digits ViTs"}
"""Each ``--pairs`` family's table title."""


def report_pairs(record: dict[str, Any], family: str | None = None) -> str:
    """The Markdown table of the seed-pair study (``--pairs``): mean ± sd per row of
    ``record[f"{family}_summary"]`` (``family``: the one the record holds), and the row's
    share of the naive barrier on each pair (pairs in the order they ran)."""
    if family is None:
        (family,) = [f for f in PAIR_TITLES if f"{f}_summary" in record]
    rows = record[f"{family}_summary"]
    labels = [k for k in ORDER if k in rows] + sorted(set(rows) - set(ORDER))
    per_pair = record[f"{family}_pairs"].values()
    header = ["row", "loss barrier at α = 0.5", "share of naive", "pairs",
              "share of naive by pair"]  # fmt: skip
    lines = [[label, f"{r['barrier']:.3f} ± {r['barrier_sd']:.3f}",
              f"{100 * r['share_of_naive']:.0f} ± {100 * r['share_of_naive_sd']:.0f} %",
              str(r["pairs"]),
              ", ".join(f"{100 * p[label]['share_of_naive']:.0f}" for p in per_pair) + " %"]
             for label, r in ((k, rows[k]) for k in labels)]  # fmt: skip
    if all("stream_cosine_mean" in r for r in rows.values()):  # --similarity
        near = {"stream_cosine_mean": "stream cosine", "stream_overlap_mean": "stream overlap",
                "weight_distance": "weight distance"}  # fmt: skip
        header += [h for title in near.values() for h in (title, f"{title} by pair")]
        for line, label in zip(lines, labels, strict=True):
            for key in near:
                line += [f"{rows[label][key]:.3f} ± {rows[label][f'{key}_sd']:.3f}",
                         ", ".join(f"{p[label][key]:.3f}" for p in per_pair)]  # fmt: skip
    return f"## {PAIR_TITLES[family]}, seed pairs\n\n" + "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(c) + " |" for c in lines])  # fmt: skip


def table(name: str, rows: dict[str, Any]) -> str:
    lines = [
        f"\n{name}",
        f"{'':34}{'barrier':>9}{'share':>8}{'ppl(0.5)':>10}{'seconds':>9}{'x wm':>7}",
    ]
    for label, r in rows.items():
        lines.append(f"{label:34}{r['barrier']:9.3f}{r['share_of_naive']:8.0%}"
                     f"{r['perplexity_mid']:10.2f}{r['seconds']:9.1f}"
                     f"{r['time_vs_weight_matching']:7.2f}")  # fmt: skip
    return "\n".join(lines)


ORDER = (
    "naive", "permutation, weight", "permutation, activation", "orthogonal, weight",
    "orthogonal, activation", "full, weight", "full (orthogonal heads), weight",
    "full, activation", "orthogonal, learned", "full, learned",
)  # fmt: skip
FAMILIES = {"llama": "Tiny Llamas", "gpt2": "Tiny GPT-2s"}


def _same(x: dict[str, Any], y: dict[str, Any]) -> bool:
    return all(x[k] == y[k] for k in ("barrier", "perplexity_mid"))


def report(record: dict[str, Any]) -> str:
    """The Markdown table of ``docs/science/transformers.md`` for each family in ``record``.

    Rows in the order the study runs them, then any other stored row (sorted). Where
    ``full`` found no V·O group its row equals ``orthogonal``'s: the two are one row
    (``orthogonal (= full)``) with both timings, ``a / b``.
    """
    parts = []
    for family, title in FAMILIES.items():
        rows = record.get(family)
        if rows is None:
            continue
        labels = [k for k in ORDER if k in rows] + sorted(set(rows) - set(ORDER))
        lines = []
        for label in labels:
            r = rows[label]
            twin = label.replace("orthogonal", "full", 1) if label.startswith("orth") else None
            if (
                label.startswith("full")
                and label.replace("full", "orthogonal", 1) in rows
                and _same(r, rows[label.replace("full", "orthogonal", 1)])
            ):
                continue  # shown with its orthogonal twin
            both = [r] + ([rows[twin]] if twin in rows and _same(r, rows[twin]) else [])
            timed = label != "naive"
            lines.append([
                label + (" (= full)" if len(both) > 1 else ""), f"{r['barrier']:.3f}",
                f"{r['share_of_naive']:.0%}", f"{r['perplexity_mid']:.1f}",
                " / ".join(f"{x['seconds']:.1f}" for x in both) if timed else "–",
                " / ".join(f"{x['time_vs_weight_matching']:.2f}" for x in both)
                if timed else "–",
            ])  # fmt: skip
        header = ["row", "loss barrier at α = 0.5", "share of naive", "perplexity at α = 0.5",
                  "seconds (benchmark)", "× weight matching (benchmark)"]  # fmt: skip
        parts.append(f"## {title}\n\n" + "\n".join(
            ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(c) + " |" for c in lines]))  # fmt: skip
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- a ViT on the digits

ALPHAS = [i / 10 for i in range(11)]
VIT = dict(image_size=8, patch_size=4, num_channels=1, hidden_size=48, num_hidden_layers=2,
           num_attention_heads=4, intermediate_size=96, num_labels=10)  # fmt: skip
"""The digits ViT: 8×8 images cut into four 4×4 patches, a class token, learned positions."""


def vit(seed: int) -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**VIT))


def digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``checkpoints/digits_{split}.pt`` as ``(N, 1, 8, 8)`` images in [0, 1] and labels."""
    data = torch.load(ROOT / "checkpoints" / f"digits_{split}.pt", weights_only=True)
    return data["x"].reshape(-1, 1, 8, 8), data["y"]


def train_vit(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int,
              epochs: int) -> float:  # fmt: skip
    """AdamW with a one-cycle rate, batches of 64 in a seeded order; the last epoch's loss."""
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(x) // 64)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps,
                                                pct_start=0.1)  # fmt: skip
    net.train()
    last = float("nan")
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = torch.nn.functional.cross_entropy(net(x[idx]).logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        last = total / len(x)
    return last


def path_curve(model: torch.nn.Module, a: Any, b: Any, data: list[Any]) -> dict[str, Any]:
    """Loss and error along the path at :data:`ALPHAS`; the barriers at α = 0.5."""
    curve = mc.interpolation_curve(model, a, b, data, alphas=ALPHAS)
    loss = [p.loss for p in curve.points]
    error = [p.error for p in curve.points]
    mid = ALPHAS.index(0.5)
    return {"loss_a": loss[0], "loss_mid": loss[mid], "loss_b": loss[-1],
            "barrier": loss[mid] - 0.5 * (loss[0] + loss[-1]),
            "error_a": error[0], "error_mid": error[mid], "error_b": error[-1],
            "error_barrier": error[mid] - 0.5 * (error[0] + error[-1]),
            "curve": {"alpha": ALPHAS, "loss": loss, "error": error}}  # fmt: skip


def vit_study(args: Any, seeds: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Two digits ViTs from ``seeds``; every row of :func:`runs` on the test split."""
    x, y = digits("train")
    tx, ty = digits("test")
    nets = {}
    for tag, seed in zip("ab", seeds, strict=True):
        net = vit(seed)
        start = time.perf_counter()
        last = train_vit(net, x, y, seed, args.vit_epochs)
        print(f"vit {tag}: trained {args.vit_epochs} epochs, last loss {last:.3f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        nets[tag] = net.eval()
    model = nets["a"]
    a, b = nets["a"].state_dict(), nets["b"].state_dict()
    test = list(zip(tx.split(100), ty.split(100), strict=True))
    train = list(zip(x.split(100), y.split(100), strict=True))

    def scores(x: Any, y: Any) -> dict[str, Any]:
        near = similarity(model, x, y, test) if args.similarity else {}
        return {**path_curve(model, x, y, test), **near}

    rows: dict[str, Any] = {"naive": {**scores(a, b), "seconds": 0.0}}

    def measure(result: Any) -> dict[str, Any]:
        return scores(result.start(a), result.aligned)

    rows.update(aligned_rows("vit", model, a, b, train, test, args, measure, None))
    naive, weight_seconds = rows["naive"]["barrier"], rows["permutation, weight"]["seconds"]
    for row in rows.values():
        row["share_of_naive"] = row["barrier"] / naive if naive else None
        row["time_vs_weight_matching"] = row["seconds"] / weight_seconds
    return rows


def report_vit(record: dict[str, Any]) -> str:
    """The Markdown table of ``docs/science/transformers.md`` for the digits ViT pair."""
    rows = record["vit"]
    header = [
        "row",
        "loss barrier at α = 0.5",
        "share of naive",
        "error barrier at α = 0.5",
        "error at α = 0.5",
        "seconds (benchmark)",
        "× weight matching (benchmark)",
    ]
    lines = []
    for label in [k for k in ORDER if k in rows] + sorted(set(rows) - set(ORDER)):
        r = rows[label]
        timed = label != "naive"
        lines.append(
            [
                label,
                f"{r['barrier']:.3f}",
                f"{100 * r['share_of_naive']:.0f} %",
                f"{100 * r['error_barrier']:.1f} %",
                f"{100 * r['error_mid']:.1f} %",
                f"{r['seconds']:.1f}" if timed else "–",
                f"{r['time_vs_weight_matching']:.2f}" if timed else "–",
            ]
        )
    return "## Digits ViT\n\n" + "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(c) + " |" for c in lines])  # fmt: skip


def seed_pairs(args: Any, numbers: dict[str, Any], one: Any) -> None:
    """``one(args, seeds)`` on each ``--pairs`` pair of ``args.family``: the rows per pair
    (``FAMILY_pairs``) and their :func:`summary` (``FAMILY_summary``), written to ``--out``
    and printed as :func:`report_pairs`."""
    numbers["settings"] = {k: v for k, v in numbers["settings"].items()
                           if k not in ("out", "models")}  # fmt: skip
    pairs = {p: one(args, tuple(int(x) for x in p.split(","))) for p in args.pairs}
    numbers.update({f"{args.family}_pairs": pairs, f"{args.family}_summary": summary(pairs)})
    if args.out is not None:
        seeds = sorted({int(x) for p in args.pairs for x in p.split(",")})
        write_result(args.out, numbers, seeds=seeds, command=["python", *sys.argv])
    print(report_pairs(numbers, args.family))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="results JSON (write_result)")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument(
        "--family",
        choices=("llama", "gpt2", "both", "vit"),
        default="llama",
        help="which pair(s): tiny Llamas, tiny GPT-2s, both, or digits ViTs",
    )
    parser.add_argument("--vit-epochs", type=int, default=None,
                        help="vit: training epochs per model")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=4, help="learned: passes over train")
    parser.add_argument("--models", type=Path, default=None,
                        help="keep the trained models here (loaded if present)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=None, help="training steps per model")
    parser.add_argument("--layers", type=int, default=None, help="layers per model")
    parser.add_argument("--lr", type=float, default=3e-3, help="learned: Adam's rate")
    parser.add_argument("--pairs", nargs="+", default=None, metavar="A,B",
                        help="the study on each seed pair, mean ± sd per row")  # fmt: skip
    parser.add_argument("--similarity", action="store_true",
                        help="also measure how near aligned B is to A: stream cosine, weight "
                             "distance")  # fmt: skip
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="LABEL",
        help="run only this row (repeatable; weight matching always runs)",
    )
    args = parser.parse_args(argv)
    steps, layers, limit = (60, 2, 300_000) if args.quick else (600, 4, 1_000_000)
    args.steps, args.layers = args.steps or steps, args.layers or layers
    args.eval_blocks, args.train_blocks = (16, 32) if args.quick else (64, 256)
    torch.set_num_threads(1)
    if args.pairs and args.family == "both":
        parser.error("--pairs takes one --family: llama, gpt2 or vit")
    if args.family == "vit":
        args.vit_epochs = args.vit_epochs or (5 if args.quick else 40)
        if args.pairs:
            return seed_pairs(args, {"settings": {**vars(args), "vit": VIT}}, vit_study)
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "models")}
        numbers = {"settings": {**settings, "vit": VIT}, "vit": vit_study(args)}
        if args.out is not None:
            write_result(args.out, numbers, seeds=[0, 1], command=["python", *sys.argv])
        print(report_vit(numbers))
        return
    text, held = tiny_lms.corpus(limit)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        tok = tiny_lms.tokenizer(text, Path(folder))
    ids = torch.tensor(tok(text)["input_ids"], dtype=torch.long)
    held_ids = torch.tensor(tok(held[:150_000])["input_ids"], dtype=torch.long)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "models")}
    numbers: dict[str, Any] = {"settings": settings}
    if args.pairs:
        make = {"llama": tiny_lms.model, "gpt2": gpt2}[args.family]

        def one(args: Any, seeds: tuple[int, int]) -> dict[str, Any]:
            return study(args.family, make, ids, held_ids, args, seeds)

        return seed_pairs(args, numbers, one)
    if args.family in ("llama", "both"):
        numbers["llama"] = study("llama", tiny_lms.model, ids, held_ids, args)
        print(table("tiny Llama (RMSNorm, RoPE, SwiGLU)", numbers["llama"]))
    if args.family in ("gpt2", "both"):
        numbers["gpt2"] = study("gpt2", gpt2, ids, held_ids, args)
        print(table("tiny GPT-2 (LayerNorm, GELU, learned positions)", numbers["gpt2"]))
    if args.out is not None:
        write_result(args.out, numbers, seeds=[0, 1, 2, 3], command=["python", *sys.argv])
    print(report(numbers))


if __name__ == "__main__":
    main()
