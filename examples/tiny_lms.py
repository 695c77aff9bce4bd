"""Two tiny Llama language models from different seeds, aligned and merged through the CLI.

Corpus: the CPython standard library's own Python sources (read from this
interpreter's installation, nothing downloaded): files whose name hashes to 0 mod 10
are held out, the others train. A byte-level BPE tokenizer (``tokenizers``, 2048
tokens) is trained on the training text. Two ``LlamaForCausalLM`` models (hidden 128,
4 layers, 4 heads, ~1.3 M parameters) are trained from different seeds (initialisation
and batch order) with AdamW on random 128-token windows, saved with
``save_pretrained`` together with the tokenizer, and then::

    modeconnect align A B --data heldout.txt --merged M --json align.json
    modeconnect merge A B --data heldout.txt --out M2 --json merge.json
    modeconnect align A B --method learned --train train.txt --data heldout.txt \
        --merged M3 --json learned.json

The last aligns under the transformers' full symmetry (residual rotation, per-head maps)
learned on the path's midpoint loss over training text (``train.txt``, 256 blocks;
6 epochs at 3e-3).

The held-out text is tokenized by the checkpoints' own tokenizer into 128-token blocks;
the models are scored by next-token cross-entropy, and the table gives the loss
barrier (nats per token) and the perplexity at the midpoint, naive and aligned, and the
merged models' perplexity.

Run: ``python examples/tiny_lms.py --out DIR`` (about seven minutes a pair on one core;
``--quick``: about a minute, for the tests). ``DIR`` gets the checkpoints, the
tokenizer, the held-out text and the JSON reports (``summary.json``: the table).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import sysconfig
import time
import zlib
from pathlib import Path
from typing import Any

import torch

from modeconnect.provenance import seed_pair, spread, write_result

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 2048
CONTEXT = 128


def corpus(limit: int) -> tuple[str, str]:
    """``(train, held-out)`` text of about ``limit`` and ``limit / 10`` characters.

    The standard library's ``.py`` files in path order; a file whose name hashes to 0
    mod 10 is held out, the others train, until both have enough.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts: dict[bool, list[str]] = {True: [], False: []}
    sizes = {True: 0, False: 0}
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        held = zlib.crc32(path.name.encode()) % 10 == 0
        if sizes[held] < (limit // 10 if held else limit):
            parts[held].append(text)
            sizes[held] += len(text)
        if sizes[False] >= limit and sizes[True] >= limit // 10:
            break
    return "\n".join(parts[False]), "\n".join(parts[True])


def tokenizer(text: str, folder: Path) -> Any:
    """A byte-level BPE of :data:`VOCAB` tokens trained on ``text``, saved into ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator([text[i : i + 10000] for i in range(0, len(text), 10000)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.save_pretrained(folder)
    return fast


def model(seed: int, layers: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=352,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=CONTEXT, tie_word_embeddings=False)  # fmt: skip
    config.use_cache = False
    return LlamaForCausalLM(config)


def train(net: torch.nn.Module, ids: torch.Tensor, seed: int, steps: int, batch: int) -> float:
    """AdamW on random ``CONTEXT``-token windows (a seeded order); the last loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps,
                                                pct_start=0.1)  # fmt: skip
    net.train()
    loss = torch.tensor(math.nan)
    for _ in range(steps):
        start = torch.randint(0, len(ids) - CONTEXT, (batch,), generator=gen)
        window = torch.stack([ids[s : s + CONTEXT] for s in start.tolist()])
        loss = net(window, labels=window).loss  # shifted inside: next-token loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


def cli(*args: object) -> None:
    command = [sys.executable, "-m", "modeconnect_cli.main", "--threads", "1", *map(str, args)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr}")
    print(proc.stdout, end="")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoints, JSON reports")
    parser.add_argument("--quick", action="store_true", help="tiny run for the tests")
    parser.add_argument(
        "--pairs", nargs="+", type=seed_pair, default=[(0, 1)], metavar="A,B",
        help="seed pairs (the first in --out, the others in --out/seeds-A-B); mean ± sd over them",
    )  # fmt: skip
    parser.add_argument(
        "--result", type=Path, help="also store the numbers with provenance (results/NAME.json)"
    )
    args = parser.parse_args(argv)
    steps, layers, limit = (30, 2, 300_000) if args.quick else (600, 4, 3_000_000)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny matrices: a second thread costs more than it gives
    started = time.perf_counter()
    text, held = corpus(limit)
    tok = tokenizer(text, args.out / "tokenizer")
    ids = torch.tensor(tok(text)["input_ids"], dtype=torch.long)
    heldout = args.out / "heldout.txt"
    heldout.write_text(held[:150_000], encoding="utf-8")
    learn_text = args.out / "train.txt"  # the learned alignment's training blocks
    learn_text.write_text(text[: 10_000 if args.quick else 120_000], encoding="utf-8")
    print(f"corpus: {len(ids):,} training tokens, vocabulary {VOCAB}")
    pairs = {}
    for i, seeds in enumerate(args.pairs):
        out = args.out if i == 0 else args.out / f"seeds-{seeds[0]}-{seeds[1]}"
        out.mkdir(parents=True, exist_ok=True)
        begun = time.perf_counter()
        for name, seed in zip(("a", "b"), seeds, strict=True):
            net = model(seed, layers)
            last = train(net, ids, seed, steps, batch=16)
            net.save_pretrained(out / name)
            tok.save_pretrained(out / name)
            print(f"model {name}: seed {seed}, last training loss {last:.3f}")
        trained = time.perf_counter() - begun
        cli("align", out / "a", out / "b", "--data", heldout, "--block-size", CONTEXT,
            "--steps", 5 if args.quick else 11, "--merged", out / "merged", "--json",
            out / "align.json", "--force")  # fmt: skip
        cli("merge", out / "a", out / "b", "--data", heldout, "--block-size", CONTEXT, "--out",
            out / "merge", "--json", out / "merge.json", "--force")  # fmt: skip
        cli("align", out / "a", out / "b", "--method", "learned", "--train", learn_text,
            "--data", heldout, "--block-size", CONTEXT, "--steps", 5 if args.quick else 11,
            "--learn-epochs", 1 if args.quick else 6, "--learn-lr", 3e-3, "--merged",
            out / "learned", "--json", out / "learned.json", "--force")  # fmt: skip
        pairs[",".join(map(str, seeds))] = summary(out, trained, time.perf_counter() - begun)
    first = next(iter(pairs.values()))
    result = {**first, "pairs": pairs, "summary": over_pairs(pairs)}  # first pair: 0.3.0 keys
    result["total_seconds"] = time.perf_counter() - started
    if len(pairs) > 1:
        for key, s in result["summary"].items():
            print(f"{key:28} {s['mean']:.4f} ± {s['sd']:.4f} over {len(pairs)} pairs")
    (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.result is not None:
        seeds_used = [s for p in args.pairs for s in p]
        write_result(args.result, result, seeds=seeds_used, command=["python", *sys.argv])
    return result


SPREAD = ("naive_barrier", "aligned_barrier", "barrier_removed", "perplexity_a", "perplexity_b",
          "naive_midpoint_perplexity", "aligned_midpoint_perplexity", "merge_perplexity",
          "plain_average_perplexity", "learned_barrier", "learned_barrier_removed",
          "learned_midpoint_perplexity")  # fmt: skip


def over_pairs(pairs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each :data:`SPREAD` number over the seed pairs: mean, sample sd, the value on each."""
    return {key: spread(p[key] for p in pairs.values()) for key in SPREAD}


def summary(out: Path, trained: float, total: float) -> dict[str, Any]:
    """The numbers of the README table, from the two JSON reports."""
    aligned = json.loads((out / "align.json").read_text())
    merged = json.loads((out / "merge.json").read_text())
    learned = json.loads((out / "learned.json").read_text())

    def mid(curve: str, report: dict[str, Any] = aligned) -> float:
        points = report[curve]["curve"]
        return float(next(p["perplexity"] for p in points if p["alpha"] == 0.5))

    def barrier(curve: str, report: dict[str, Any] = aligned) -> float:
        return float(report[curve]["barrier"]["loss"])

    curve = aligned["naive"]["curve"]
    result = {
        "perplexity_a": curve[0]["perplexity"],
        "perplexity_b": curve[-1]["perplexity"],
        "naive_barrier": aligned["naive"]["barrier"]["loss"],
        "aligned_barrier": aligned["aligned"]["barrier"]["loss"],
        "naive_midpoint_perplexity": mid("naive"),
        "aligned_midpoint_perplexity": mid("aligned"),
        "merge_perplexity": merged["metrics"]["merged"]["perplexity"],
        "plain_average_perplexity": merged["metrics"]["plain_average"]["perplexity"],
        "barrier_removed": 1 - barrier("aligned") / barrier("naive"),
        "learned_barrier": barrier("aligned", learned),
        "learned_barrier_removed": 1 - barrier("aligned", learned) / barrier("naive", learned),
        "learned_midpoint_perplexity": mid("aligned", learned),
        "learned_seconds": float(learned["alignment"]["seconds"]),
        "train_seconds": trained,
        "total_seconds": total,
    }
    print(
        f"\nendpoints    A ppl {result['perplexity_a']:.2f}   B ppl {result['perplexity_b']:.2f}\n"
        f"naive        loss barrier {result['naive_barrier']:.3f}  "
        f"midpoint ppl {result['naive_midpoint_perplexity']:.2f}\n"
        f"aligned      loss barrier {result['aligned_barrier']:.3f}  "
        f"midpoint ppl {result['aligned_midpoint_perplexity']:.2f}\n"
        f"learned      loss barrier {result['learned_barrier']:.3f}  "
        f"midpoint ppl {result['learned_midpoint_perplexity']:.2f}\n"
        f"merge        ppl {result['merge_perplexity']:.2f} "
        f"(plain average {result['plain_average_perplexity']:.2f})\n"
        f"time         {trained:.0f} s training, {total:.0f} s in all"
    )
    return result


if __name__ == "__main__":
    main()
