"""Rerun the studies and benchmarks behind the documented numbers, then say what moved.

    python -m tools.reproduce              # the runs that fit a CPU in under an hour (~53 min)
    python -m tools.reproduce --all        # and the long runs (seed-pair studies, MNIST-scale
                                           # merging, transformer symmetry, Ray): ~6 h more
    python -m tools.reproduce --only science_bn_repair federated_rounds_quick
    python -m tools.reproduce --check      # no runs: compare the docs with results/ now
    python -m tools.reproduce --list       # the runs, their commands and expected minutes

Each run rewrites its ``results/*.json`` (numbers with command, commit, versions,
machine, seeds and date) and the plots drawn from it. Then every check of
:mod:`tools.claims` (the same ones ``tests/test_results.py`` asserts) compares the
README and ``docs/`` with the stored numbers, and each documented number that moved
beyond its tolerance (half a unit of its last printed digit) is printed; the exit code is 1
if any did. Minutes are from a shared 2-core machine, one thread.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tools.claims import ROOT, moved, run_checks

REBASIN_PYTHON = Path("/tmp/rebasin-venv/bin/python")


@dataclass(frozen=True)
class Run:
    """One script run: its name, its command (from the repository root), minutes."""

    name: str
    command: tuple[str, ...]
    minutes: float
    cwd: str = "."
    writes: tuple[str, ...] = ()  # results it writes into an ``--out`` folder
    long: bool = False  # past the hour: only with --all or --only
    needs: Path | None = None  # a file outside the repository the run cannot do without
    setup: str = ""  # how to make ``needs`` (said when it is absent)

    def missing(self) -> str | None:
        """Why this run cannot start here (one line), or None when it can."""
        if self.needs is None or self.needs.exists():
            return None
        return f"needs {self.needs}, which is absent ({self.setup})"

    def results(self) -> set[str]:
        """The ``results/*.json`` this run rewrites (relative to the repository root)."""
        named = {c.removeprefix("../") for c in self.command if c.endswith(".json")}
        return named | set(self.writes)


def _science(study: str, minutes: float) -> list[Run]:
    script = f"examples/science_{study}.py"
    return [
        Run(f"science_{study}", ("python", script, "--out", f"results/science_{study}.json",
                                 "--plots", "docs/science"), minutes),
        Run(f"science_{study}_quick", ("python", script, "--quick", "--out",
                                       f"results/science_{study}_quick.json"), 0.5),
    ]  # fmt: skip


FIRST_ROWS = ("permutation, activation", "orthogonal, weight", "orthogonal, activation",
              "full, weight", "full (orthogonal heads), weight", "full, activation",
              "orthogonal, learned", "full, learned")  # fmt: skip
"""The rows of the first transformer tables (the later rows have runs of their own)."""
RECOVERY_ROWS = ("orthogonal, weight", "full, weight", "full (orthogonal heads), weight",
                 "full (orthogonal Q·K), weight", "orthogonal, activation", "full, activation",
                 "full (orthogonal heads), activation", "orthogonal, learned")  # fmt: skip
"""The Llama rows re-measured after exact recovery (weight rounds, normalised activations)."""
PAIR_ROWS = ("orthogonal, weight", "orthogonal, activation", "full (orthogonal heads), weight",
             "full (orthogonal heads), activation", "orthogonal, learned")  # fmt: skip
"""The Llama rows measured over three seed pairs."""
FIRST_PAIR_ROWS = ("permutation, activation", "full, weight", "full, activation",
                   "orthogonal, learned", "full, learned")  # fmt: skip
"""The first Llama table's rows no other seed-pair run holds (and the learned rotation)."""
QK_ROWS = ("full, weight", "full (V·O only, no Q·K), weight", "orthogonal, weight",
           "full (orthogonal heads), weight",
           "full (orthogonal heads, no Q·K), weight")  # fmt: skip
"""The rows of the Q·K table."""
QK_PAIR_ROWS = (*QK_ROWS, "full (orthogonal Q·K), weight")
LEARNED_ROWS = ("orthogonal, learned", "orthogonal, learned + STE permutations",
                "orthogonal, learned two-sided")  # fmt: skip
"""The learned variants compared over the seed pairs."""
HEAD_ROWS = ("full (orthogonal heads), activation", "full (activation-fitted heads), activation",
             "orthogonal, learned", "full (orthogonal heads), learned", "full, learned heads",
             "full, learned heads + STE permutations")  # fmt: skip
"""The per-head map fits compared over the seed pairs: to weights or activations, learned."""
SINKHORN_ROWS = ("full, learned heads", "full, learned heads + STE permutations",
                 "full, learned heads + Sinkhorn permutations")  # fmt: skip
"""The two ways of learning the permutations, with the learned heads, and without them."""
SIMILARITY_ROWS = ("orthogonal, weight", "orthogonal, activation",
                   "full (orthogonal heads), weight", "full (orthogonal heads), activation",
                   "orthogonal, learned", "full, learned heads")  # fmt: skip
"""The closed forms against the learned alignments, with how near each leaves B to A."""
"""The Q·K table's rows over three seed pairs, and least-squares V·O with rotation-only Q·K
(the two-sided and recovery tables' one Q·K variant the table lacks)."""
GPT2_FIRST_PAIR_ROWS = ("permutation, activation", "full, activation", "orthogonal, learned",
                        "full, learned")  # fmt: skip
"""The first GPT-2 table's rows no other seed-pair run holds (and the learned rotation)."""
GPT2_PAIR_ROWS = ("orthogonal, weight", "full, weight", "full (orthogonal heads), weight",
                  "orthogonal, activation", "full (orthogonal heads), activation",
                  "orthogonal, learned")  # fmt: skip
"""The GPT-2 rows re-measured after exact recovery, and over three seed pairs."""

_TRAINED = {
    "llama": ("--steps", "200", "--layers", "2", "--epochs", "6", "--models",
              "runs/reproduce/symmetry_llama"),
    "gpt2": ("--steps", "200", "--layers", "2", "--epochs", "3", "--models",
             "runs/reproduce/symmetry_gpt2"),
    "vit": ("--epochs", "6"),
}  # fmt: skip
"""Each family's training and learning settings in the seed-pair studies."""


def _pairs(name: str, family: str, rows: tuple[str, ...], minutes: float, *extra: str) -> Run:
    """``bench_symmetry.py``'s ``rows`` on ``family``'s three seed pairs (with ``extra``
    options), stored as ``name``."""
    return Run(name, ("python", "benchmarks/bench_symmetry.py", "--family", family,
                      *_TRAINED[family], "--pairs", "0,1", "2,3", "4,5", *extra,
                      *(a for row in rows for a in ("--only", row)),
                      "--out", f"results/{name}.json"), minutes, long=True)  # fmt: skip


RUNS: list[Run] = [
    *_science("width", 2.5),
    *_science("layerwise", 1.5),
    *_science("bn_repair", 1.0),
    *_science("curves", 3.0),
    *_science("sharpness", 6.0),
    Run("federated_rounds_quick", ("python", "federated_rounds.py", "--quick", "--out",
        "../results/federated_rounds_quick.json"), 0.5, "examples"),
    Run("federated_rounds_main", ("python", "federated_rounds.py", "--out",
        "../results/federated_rounds_main.json", "--plot", "../docs/federated_rounds.png"),
        8.0, "examples", long=True),
    Run("federated_rounds_narrow", ("python", "federated_rounds.py", "--out",
        "../results/federated_rounds_narrow.json", "--plot",
        "../docs/federated_rounds_narrow.png", "--hidden", "16", "--lr", "0.1", "--epochs",
        "20", "50"), 6.0, "examples"),
    Run("tiny_lms_quick", ("python", "examples/tiny_lms.py", "--quick", "--out",
        "runs/reproduce/tiny_lms_quick", "--result", "results/tiny_lms_quick.json"), 1.5),
    Run("tiny_lms", ("python", "examples/tiny_lms.py", "--out", "runs/reproduce/tiny_lms",
        "--pairs", "0,1", "2,3", "4,5", "--result", "results/tiny_lms.json"), 36.0, long=True),
    Run("bn_reset_digits", ("python", "examples/bn_reset_digits.py", "--steps", "25",
        "--pairs", "1,2", "3,4", "5,6", "--result", "results/bn_reset_digits.json"), 3.0),
    Run("mnist_scale_digits", ("python", "examples/mnist_scale_digits.py", "--pairs", "1,2",
        "3,4", "5,6", "--result", "results/mnist_scale_digits.json"), 9.0, long=True),
    Run("federated_digits", ("python", "federated_digits.py", "--out",
        "../results/federated_digits.json"), 0.5, "examples"),
    Run("readme_runs", ("python", "-m", "tools.readme_runs"), 6.0),
    Run("bench_spec_budget", ("python", "benchmarks/bench_spec.py", "--budget", "--out",
        "results/bench_spec_budget.json"), 0.5),
    # without the side venv it would store modeconnect's rows alone: skipped, and said why
    Run("bench_rebasin", ("python", "benchmarks/bench_rebasin.py", "--pairs", "digits",
        "--rebasin-python", str(REBASIN_PYTHON), "--out", "results/bench_rebasin.json"), 1.0,
        needs=REBASIN_PYTHON, setup="the rebasin side venv: see benchmarks/bench_rebasin.py's "
        "docstring"),
    Run("bench_methods", ("python", "benchmarks/bench_methods.py", "--repeats", "3", "--out",
        "results/bench_methods.json"), 0.5),
    Run("bench_weight_matching", ("python", "benchmarks/bench_weight_matching.py", "--pairs",
        "digits", "mnist512", "mnist4096", "permuted512", "permuted2048", "--out",
        "results/bench_weight_matching.json"), 10.0, long=True),  # + 30 min training once
    Run("bench_evaluate", ("python", "benchmarks/bench_evaluate.py", "--sections", "floor",
        "--steps", "25", "--layer-steps", "25", "--grid", "21", "11", "11", "--floor-repeats",
        "2", "--out", "results/bench_evaluate.json"), 6.0),
    *(Run(f"bench_evaluate_rewrite_{threads}t", ("python", "benchmarks/bench_evaluate.py",
          "--sections", "floor", "--cases", "digits", "--grid", "21", "11", "11",
          "--floor-repeats", "3", "--rewrite", "--threads", str(threads), "--out",
          f"results/bench_evaluate_rewrite_{threads}t.json"), 1.0) for threads in (1, 2)),
    Run("bench_evaluate_loops", ("python", "benchmarks/bench_evaluate.py", "--sections",
        "curves,layerwise,reset,lm", "--threads", "1", "--out",
        "results/bench_evaluate_loops.json"), 20.0, long=True),
    Run("bench_large_tinyllama", ("python", "benchmarks/bench_large.py", "tinyllama",
        "--repeats", "3", "--out", "results/bench_large_tinyllama.json"), 40.0, long=True),
    Run("bench_git_rebasin_jax", ("python", "benchmarks/bench_git_rebasin_jax.py", "--out",
        "results/bench_git_rebasin_jax.json"), 10.0, long=True),  # needs the bench-jax extra
    Run("science_merging", ("python", "examples/science_merging.py", "--out", "results"), 2.5,
        writes=tuple(f"results/merging_{s}.json"
                     for s in ("class_split", "width_fusion", "compression", "n_way"))),
    Run("science_merging_lm_width", ("python", "examples/science_merging_lm_width.py", "--out",
        "results"), 27.0, writes=("results/merging_lm_width.json",), long=True),
    Run("science_merging_mnist", ("python", "examples/science_merging_mnist.py", "--out",
        "results"), 16.0, writes=("results/merging_mnist_scale.json",), long=True),
    Run("science_merging_mnist_split", ("python", "examples/science_merging_mnist_split.py",
        "--out", "results"), 7.5, writes=("results/merging_mnist_class_split.json",), long=True),
    Run("science_merging_mnist_nway", ("python", "examples/science_merging_mnist_nway.py",
        "--out", "results"), 9.0, writes=("results/merging_mnist_n_way.json",), long=True),
    Run("transformers_symmetry", ("python", "benchmarks/bench_symmetry.py", "--family", "llama",
        "--steps", "200", "--layers", "2", "--epochs", "6", "--models",
        "runs/reproduce/symmetry_llama", *(a for row in FIRST_ROWS for a in ("--only", row)),
        "--out", "results/transformers_symmetry.json"), 9.0, long=True),
    # the same trained pair (--models keeps it), the rows added with the Q·K maps and STE
    Run("transformers_symmetry_qk", ("python", "benchmarks/bench_symmetry.py", "--family",
        "llama", "--steps", "200", "--layers", "2", "--models", "runs/reproduce/symmetry_llama",
        *(a for row in QK_ROWS for a in ("--only", row)),
        "--out", "results/transformers_symmetry_qk.json"), 2.0, long=True),
    Run("transformers_symmetry_ste", ("python", "benchmarks/bench_symmetry.py", "--family",
        "llama", "--steps", "200", "--layers", "2", "--epochs", "6", "--models",
        "runs/reproduce/symmetry_llama", "--only", "orthogonal, learned", "--only",
        "orthogonal, learned + STE permutations", "--out",
        "results/transformers_symmetry_ste.json"), 3.0, long=True),
    # the same trained pair: the default (orthogonal) heads, least-squares ones, two-sided
    Run("transformers_symmetry_two_sided", ("python", "benchmarks/bench_symmetry.py",
        "--family", "llama", "--steps", "200", "--layers", "2", "--epochs", "6", "--models",
        "runs/reproduce/symmetry_llama",
        *(a for row in ("full, weight", "full (orthogonal Q·K), weight",
                        "full (orthogonal heads), weight", "orthogonal, learned",
                        "orthogonal, learned two-sided") for a in ("--only", row)),
        "--out", "results/transformers_symmetry_two_sided.json"), 3.0, long=True),
    Run("transformers_symmetry_vit", ("python", "benchmarks/bench_symmetry.py", "--family",
        "vit", "--epochs", "6", "--out", "results/transformers_symmetry_vit.json"), 2.5),
    Run("transformers_symmetry_gpt2", ("python", "benchmarks/bench_symmetry.py", "--family",
        "gpt2", "--steps", "200", "--layers", "2", "--epochs", "3",
        *(a for row in FIRST_ROWS if "heads" not in row for a in ("--only", row)), "--out",
        "results/transformers_symmetry_gpt2.json"), 7.0, long=True),
    # after exact recovery (anchored start, head maps inside the rounds, GPT-2's heads,
    # normalised activations): the rows that moved, on the same trained pairs
    Run("transformers_symmetry_recovery", ("python", "benchmarks/bench_symmetry.py",
        "--family", "llama", "--steps", "200", "--layers", "2", "--epochs", "6", "--models",
        "runs/reproduce/symmetry_llama", *(a for row in RECOVERY_ROWS for a in ("--only", row)),
        "--out", "results/transformers_symmetry_recovery.json"), 4.0, long=True),
    Run("transformers_symmetry_recovery_gpt2", ("python", "benchmarks/bench_symmetry.py",
        "--family", "gpt2", "--steps", "200", "--layers", "2", "--epochs", "3", "--models",
        "runs/reproduce/symmetry_gpt2", *(a for row in GPT2_PAIR_ROWS for a in ("--only", row)),
        "--out",
        "results/transformers_symmetry_recovery_gpt2.json"), 6.0, long=True),
    # the Llama study over three seed pairs (the first is the pair above)
    _pairs("transformers_symmetry_learned_pairs", "llama", LEARNED_ROWS, 8.0),
    _pairs("transformers_symmetry_activation_heads_pairs", "llama", HEAD_ROWS[:2], 2.0),
    _pairs("transformers_symmetry_gpt2_heads_pairs", "gpt2", HEAD_ROWS, 8.0),
    _pairs("transformers_symmetry_vit_heads_pairs", "vit", HEAD_ROWS, 12.0),
    _pairs("transformers_symmetry_learned_heads_pairs", "llama", HEAD_ROWS[2:], 10.0),
    _pairs("transformers_symmetry_pairs", "llama", PAIR_ROWS, 12.0),
    *(_pairs(f"transformers_symmetry_{stem}sinkhorn_pairs", family, SINKHORN_ROWS, minutes)
      for stem, family, minutes in (("", "llama", 8.0), ("gpt2_", "gpt2", 6.0),
                                    ("vit_", "vit", 8.0))),
    # how near each alignment leaves B to A: the closed forms maximise it, the loss does not
    *(_pairs(f"transformers_symmetry_{stem}similarity_pairs", family, SIMILARITY_ROWS, minutes,
             "--similarity")
      for stem, family, minutes in (("", "llama", 8.0), ("gpt2_", "gpt2", 6.0))),
    # the digits ViTs and the GPT-2s over three seed pairs (the first is the pair above)
    _pairs("transformers_symmetry_vit_pairs", "vit", (), 10.0),
    _pairs("transformers_symmetry_gpt2_pairs", "gpt2", GPT2_PAIR_ROWS, 14.0),
    # the first tables' other rows and the Q·K table's, over the same three seed pairs
    _pairs("transformers_symmetry_first_pairs", "llama", FIRST_PAIR_ROWS, 14.0),
    Run("transformers_symmetry_qk_pairs", ("python", "benchmarks/bench_symmetry.py",
        "--family", "llama", "--steps", "200", "--layers", "2", "--models",
        "runs/reproduce/symmetry_llama", "--pairs", "0,1", "2,3", "4,5",
        *(a for row in QK_PAIR_ROWS for a in ("--only", row)),
        "--out", "results/transformers_symmetry_qk_pairs.json"), 3.0),
    _pairs("transformers_symmetry_gpt2_first_pairs", "gpt2", GPT2_FIRST_PAIR_ROWS, 12.0),
    # the transformer figures, redrawn from the stored runs (after the runs above)
    Run("transformers_symmetry_figures", ("python", "benchmarks/symmetry_figures.py"), 0.2),
    # the merging figures, redrawn from the stored runs (after the merging runs above)
    Run("merging_figures", ("python", "examples/merging_figures.py"), 0.2),
    Run("bench_ray", ("python", "benchmarks/bench_ray.py", "--repeats", "3", "--out",
        "results/bench_ray.json"), 8.0, long=True),
    # the ConvBN study (one more timed run), then its passes counted and priced again
    Run("convbn_layerwise_study", ("python", "benchmarks/convbn_study.py", "--timeout", "3600",
        "--out", "results/convbn_layerwise_study.json"), 60.0, long=True),
    Run("convbn_layerwise_estimate", ("python", "benchmarks/convbn_study.py", "--estimate",
        "--out", "results/convbn_layerwise_study.json"), 3.0),
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these (see --list)")
    parser.add_argument("--check", action="store_true", help="no runs; compare docs and results")
    parser.add_argument("--list", action="store_true", help="print the runs and exit")
    parser.add_argument("--all", action="store_true", help="also the long runs (over the hour)")
    args = parser.parse_args(argv)
    chosen = [r for r in RUNS if r.name in args.only] if args.only else [
        r for r in RUNS if args.all or not r.long]  # fmt: skip
    unknown = set(args.only or ()) - {r.name for r in RUNS}
    if unknown:
        parser.error(f"unknown run(s) {sorted(unknown)}; --list names them")
    if args.list:
        for r in RUNS:
            where = "" if r.cwd == "." else f"(cd {r.cwd}) "
            flag = " (long: --all)" if r.long else ""
            flag += f" (needs {r.needs})" if r.needs is not None else ""
            print(f"{r.name:26} ~{r.minutes:4.1f} min  {where}{' '.join(r.command)}{flag}")
        short = sum(r.minutes for r in RUNS if not r.long)
        print(f"{'total':26} ~{short:4.1f} min, with --all ~{sum(r.minutes for r in RUNS):.1f}")
        return 0
    failed, skipped = [], []
    if not args.check:
        for r in chosen:
            why = r.missing()
            if why is not None:
                skipped.append(r.name)
                print(f"[{r.name}] skipped: {why}", flush=True)
                continue
            start = time.perf_counter()
            print(f"[{r.name}] {' '.join(r.command)}", flush=True)
            command = [sys.executable if c == "python" else c for c in r.command]
            done = subprocess.run(command, cwd=ROOT / r.cwd, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode:
                failed.append(r.name)
                print(f"[{r.name}] FAILED after {seconds:.0f} s:\n{done.stderr[-2000:]}")
            else:
                print(f"[{r.name}] done in {seconds:.0f} s", flush=True)
    findings = run_checks()
    drifted = moved(findings)
    print(f"\n{len(findings)} documented numbers checked against results/: "
          f"{len(drifted)} moved beyond their tolerance")  # fmt: skip
    for f in drifted:
        print(f"  {f}")
    if skipped:
        print(f"runs skipped (their stored results kept): {', '.join(skipped)}")
    if failed:
        print(f"runs that failed: {', '.join(failed)}")
    return 1 if drifted or failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
