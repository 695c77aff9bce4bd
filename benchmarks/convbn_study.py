"""The held-out-style ConvBN layer-wise study of issue 22, timed end to end.

``modeconnect barrier A B --layerwise --bn reset --steps 25 --align none`` on two
``conv_net(1, [32, 64], 10, image_size=28)`` at random initialisation (seeds 1 and 2),
10 000 random training and 10 000 random test images (seed 0), batch 500. The CLI runs
as a subprocess under ``/usr/bin/time``; the wall and CPU seconds (user + system) of
that process, the load average sampled every 10 s while it ran, and the barriers it
wrote are stored. The target is 10 minutes on 2 cores. Run from the repository root::

    python benchmarks/convbn_study.py [--examples 10000] [--steps 25] [--timeout 3600] \\
        [--max-bn-batches N] [--out results/convbn_layerwise_study.json]

``--examples 2000 --steps 5`` is a quick check (a few minutes).

``--estimate`` counts instead of timing: the study runs on a stand-in of the same
structure (``conv_net(1, [1, 1], 10, image_size=2)``, 500 examples a split, the prefix
cache deciding by the real model's sizes at the full data), counting the rows each child
of the network runs in eval and in training mode (BatchNorm reset); times 20 it is the
full study's count. Multiplied by the CPU seconds per 500-row batch of each child of the
real model (median of 3 interleaved measurements), it estimates the study's CPU seconds.
Run with ``PYTHONPATH`` at another checkout (``git archive``) it counts that code's
passes; ``--layout plain`` prices evaluation passes in the plain layout (before
channels-last).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeconnect.bn import bn_batches  # noqa: E402
from modeconnect.io.checkpoints import save_checkpoint  # noqa: E402
from modeconnect.models import conv_net  # noqa: E402
from modeconnect.provenance import read_result, write_result  # noqa: E402

KWARGS = {"in_channels": 1, "channels": [32, 64], "num_classes": 10, "image_size": 28}
SEEDS = (1, 2)
DATA_SEED = 0


def write_inputs(folder: Path, examples: int) -> dict[str, Path]:
    """The two checkpoints and the two data files of the study, in ``folder``."""
    files = {}
    for seed, name in zip(SEEDS, ("a", "b"), strict=True):
        torch.manual_seed(seed)
        files[name] = save_checkpoint(
            folder / f"{name}.pt", conv_net(**KWARGS).state_dict(),
            model_ref="modeconnect.models:conv_net", model_kwargs=KWARGS,
        )  # fmt: skip
    g = torch.Generator().manual_seed(DATA_SEED)
    for split in ("train", "test"):
        x = torch.randn(examples, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (examples,), generator=g)
        torch.save({"x": x, "y": y}, folder / f"{split}.pt")
        files[split] = folder / f"{split}.pt"
    return files


def run_study(argv: list[str], timeout: float) -> dict[str, Any]:
    """Run ``argv`` under ``/usr/bin/time``: wall and CPU seconds, load averages, exit code."""
    loads: list[float] = [os.getloadavg()[0]]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(10.0):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.NamedTemporaryFile("r", suffix=".time") as clock:
        timed = ["/usr/bin/time", "-f", "%e %U %S", "-o", clock.name, *argv]
        start = time.perf_counter()
        proc = subprocess.Popen(timed, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)  # fmt: skip
        try:
            err = proc.communicate(timeout=timeout)[1]
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:  # the CLI too, not only /usr/bin/time
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            code, err = None, "timeout"
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        fields = clock.read().split()
    out: dict[str, Any] = {"exit_code": code, "finished": code == 0, "seconds_wall": wall}
    if code is not None and len(fields) >= 3:
        elapsed, user, system = map(float, fields[-3:])
        out.update(seconds_wall=elapsed, seconds_cpu=user + system, seconds_user=user)
    out["load_average_1min"] = {
        "first": loads[0], "min": min(loads), "max": max(loads),
        "mean": sum(loads) / len(loads), "samples": len(loads),
    }  # fmt: skip
    if code != 0:
        out["stderr_tail"] = err[-500:]
    return out


def summary(study: dict[str, Any]) -> dict[str, Any]:
    """The barriers the study found: the full path's per split and each layer's (loss, lerp)."""
    splits = study["naive"]["splits"]
    layers = {
        rec["group"]: {v: rec[v]["lerp"]["loss"] for v in ("from_a", "from_b", "cumulative")}
        for rec in study["layerwise"]
    }
    return {
        "full_path_loss_barrier_lerp": {k: v["lerp"]["loss"] for k, v in splits.items()},
        "layerwise_loss_barrier_lerp": layers,
        "seconds_reported": study["seconds"],
    }


def count_rows(steps: int, max_bn_batches: int | None, scale: int = 20) -> dict[str, int]:
    """Rows per child and mode (``"5:train"``) of the study at 20 batches of 500 examples a
    split, each BatchNorm reset reading ``max_bn_batches`` of them (``None``: all): on 20
    batches of 25 stand-in rows, each counting for ``scale`` = 20 rows."""
    import collections

    import modeconnect.layerwise as lw
    from modeconnect.barrier_studies import barrier_study

    real = conv_net(**KWARGS).eval()
    sizes, h = {}, torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        for i, child in enumerate(real):
            h = child(h)
            sizes[i + 1] = h.numel() * h.element_size()

    def fits(self: Any, x0: Any, batches: Any, correct: Any) -> bool:
        cached = 500 * lw.cached_batches(batches, correct)  # rows of the real study
        return sizes[len(self.prefix)] * cached <= lw.PREFIX_BYTES

    small = {**KWARGS, "channels": [1, 1], "image_size": 2}
    states = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        states.append(conv_net(**small).state_dict())
    # eval mode (every pass sets the modes it runs in): a BatchNorm then trains only in a reset
    # (a module's default training flag would count a suffix's evaluation rows as training
    # rows while its prefix's BatchNorm, which does not run, keeps that flag)
    model = conv_net(**small).eval()
    g = torch.Generator().manual_seed(DATA_SEED)
    data = [[(torch.randn(25, 1, 2, 2, generator=g), torch.randint(0, 10, (25,), generator=g))
             for _ in range(20)] for _ in range(2)]  # fmt: skip
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    rows: collections.Counter[str] = collections.Counter()
    for name, child in model.named_children():

        def hook(module: Any, args: Any, name: str = name) -> None:
            mode = "train" if any(n.training for n in norms) else "eval"
            rows[f"{name}:{mode}"] += args[0].shape[0] * scale

        child.register_forward_pre_hook(hook)
    original, lw.Prefix.fits = lw.Prefix.fits, fits  # type: ignore[method-assign]
    try:
        barrier_study(model, *states, test=data[0], train=data[1], align=None, bn="reset",
                      steps=steps, layerwise=True, max_bn_batches=max_bn_batches)  # fmt: skip
    finally:
        lw.Prefix.fits = original  # type: ignore[method-assign]
    return dict(sorted(rows.items()))


def batch_costs(reps: int = 3) -> dict[str, dict[str, float]]:
    """CPU seconds per 500-row batch of each child of the real model: evaluation in the
    channels-last and the plain layout, BatchNorm training mode in the plain layout."""
    torch.manual_seed(0)
    model, x = conv_net(**KWARGS), torch.randn(500, 1, 28, 28)
    kinds = {"eval_channels_last": ("eval", torch.channels_last),
             "eval_plain": ("eval", torch.contiguous_format),
             "train_plain": ("train", torch.contiguous_format)}  # fmt: skip
    seen: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for _ in range(reps):  # interleaved, so that the load falls on all alike
        for kind, (mode, layout) in kinds.items():
            for child in model:
                child.train(mode == "train" and isinstance(child, torch.nn.BatchNorm2d))
                if isinstance(child, torch.nn.Conv2d):
                    child.weight.data = child.weight.data.clone(memory_format=layout)
            cost: dict[str, float] = {}
            with torch.no_grad():
                for rep in range(3):
                    h = x
                    for i, child in enumerate(model):
                        start = time.process_time()
                        h = child(h)
                        if rep:  # the first is a warm-up
                            cost[str(i)] = cost.get(str(i), 0.0) + (time.process_time() - start) / 2
            seen[kind].append(cost)
    return {k: {c: sorted(d[c] for d in v)[len(v) // 2] for c in v[0]} for k, v in seen.items()}


def estimate(rows: dict[str, int], costs: dict[str, dict[str, float]], layout: str) -> float:
    """CPU seconds: rows / 500 x the cost of a batch of that child in that mode."""
    total = 0.0
    for key, n in rows.items():
        child, mode = key.split(":")
        kind = f"eval_{layout}" if mode == "eval" else "train_plain"
        total += n / 500 * costs[kind][child]
    return total


def store_estimate(
    out: Path,
    rows: dict[str, int],
    costs: dict[str, dict[str, float]],
    load: Any,
    *,
    cap: int | None,
    rows_all: dict[str, int] | None = None,
) -> None:
    """Price ``rows`` (this code's, each reset reading ``cap`` batches of 500; ``None``: all),
    ``rows_all`` (this code resetting on all the training data) and the stored rows of the
    code before (``git archive 46e8759``, plain layout) with ``costs`` into ``out``'s
    ``estimate``."""
    numbers = read_result(out) if out.exists() else {"runs": []}
    before = numbers.get("estimate", {}).get("rows_per_child_before_46e8759")
    split = {m: {k: v for k, v in rows.items() if k.endswith(f":{m}")} for m in ("eval", "train")}
    evals, resets = (estimate(split[m], costs, "channels_last") for m in ("eval", "train"))
    now = evals + resets
    found: dict[str, Any] = {
        "method": "forward rows per child and mode counted on a stand-in of the same "
        "structure (benchmarks/convbn_study.py --estimate), times the CPU seconds per "
        "500-row batch of each child of the real model measured in the same run (median of 3)",
        "max_bn_batches": cap, "training_examples_per_reset": 10_000 if cap is None else 500 * cap,
        "rows_per_child_this_branch": rows, "batch_cpu_seconds": costs,
        "load_average_during_pricing": load, "cpu_seconds_this_branch": round(now, 1),
        "cpu_seconds_eval_passes": round(evals, 1),
        "cpu_seconds_bn_reset_passes": round(resets, 1),
        "minutes_of_two_fully_used_cores_this_branch": round(now / 120, 1),
    }  # fmt: skip
    if cap is None:
        found["cpu_seconds_if_reset_rows_fifth"] = round(evals + resets / 5, 1)
    if rows_all is not None:
        whole = estimate(rows_all, costs, "channels_last")
        found.update(rows_per_child_all_training_data=rows_all,
                     cpu_seconds_all_training_data=round(whole, 1),
                     ratio_this_branch_vs_all_training_data=round(now / whole, 3))  # fmt: skip
    if before is not None:
        then = estimate(before, costs, "plain")
        found.update(rows_per_child_before_46e8759=before,
                     cpu_seconds_before_46e8759=round(then, 1),
                     ratio_this_branch_vs_before=round(now / then, 3))  # fmt: skip
    if "estimate" in numbers:  # the earlier pricing stays, under another load
        numbers["estimates_earlier"] = [*numbers.get("estimates_earlier", []),
                                        numbers["estimate"]]  # fmt: skip
    numbers["estimate"] = found
    write_result(out, numbers, seeds=(DATA_SEED, *SEEDS), command=" ".join(sys.argv))


def cap_option(text: str) -> int | str:
    """``--max-bn-batches``: a positive int or ``all``."""
    if text == "all":
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of batches or 'all'")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument(
        "--max-bn-batches",
        type=cap_option,
        default=None,
        help="passed to the CLI (default: its own, see --help there)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--estimate", action="store_true", help="count and price, no run")
    parser.add_argument("--layout", choices=("channels_last", "plain"), default="channels_last")
    args = parser.parse_args()
    if args.estimate:
        cap = bn_batches(args.max_bn_batches, 500)
        rows = count_rows(args.steps, cap)
        rows_all = count_rows(args.steps, None) if cap is not None else None
        costs = batch_costs()
        found = {
            "rows": rows, "batch_cpu_seconds": costs, "load_average": os.getloadavg(),
            "layout": args.layout, "cpu_seconds": estimate(rows, costs, args.layout),
            "max_bn_batches": cap,
        }  # fmt: skip
        print(json.dumps(found, indent=2))
        if args.out is not None:
            store_estimate(args.out, rows, costs, found["load_average"], cap=cap,
                           rows_all=rows_all)  # fmt: skip
        return
    cli = shutil.which("modeconnect") or sys.exit("modeconnect: console script not found")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        f = write_inputs(folder, args.examples)
        argv = [cli, "barrier", str(f["a"]), str(f["b"]), "--data", str(f["test"]),
                "--train", str(f["train"]), "--layerwise", "--bn", "reset",
                "--steps", str(args.steps), "--align", "none", "--batch-size", "500",
                "--quiet", "--json", str(folder / "study.json")]  # fmt: skip
        if args.max_bn_batches is not None:
            argv += ["--max-bn-batches", str(args.max_bn_batches)]
        run = run_study(argv, args.timeout)
        if run["finished"]:
            run.update(summary(json.loads((folder / "study.json").read_text())))
    shown = ["modeconnect", *argv[1:]]
    run.update(examples=args.examples, steps=args.steps,
               max_bn_batches=bn_batches(args.max_bn_batches, 500),
               batch=500, target_seconds=600, command=" ".join(shown))  # fmt: skip
    print(json.dumps(run, indent=2))
    if args.out is not None:
        stored = read_result(args.out) if args.out.exists() else {}
        earlier = stored.get("runs", [])
        numbers = {
            **stored,  # the estimates stay
            "study": "modeconnect barrier A B --layerwise --bn reset --steps 25 --align none, "
            "conv_net(1, [32, 64], 10, 28x28) random init (seeds 1, 2), random train and test "
            "images (seed 0), batch 500",
            "runs": [*earlier, run],
        }
        write_result(args.out, numbers, seeds=(DATA_SEED, *SEEDS),
                     command=" ".join(sys.argv))  # fmt: skip


if __name__ == "__main__":
    main()
