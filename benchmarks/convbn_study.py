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
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
        try:
            proc = subprocess.run(timed, capture_output=True, text=True, timeout=timeout)
            code, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--max-bn-batches", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
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
    run.update(examples=args.examples, steps=args.steps, max_bn_batches=args.max_bn_batches,
               batch=500, target_seconds=600, command=" ".join(shown))  # fmt: skip
    print(json.dumps(run, indent=2))
    if args.out is not None:
        earlier = read_result(args.out).get("runs", []) if args.out.exists() else []
        numbers = {
            "study": "modeconnect barrier A B --layerwise --bn reset --steps 25 --align none, "
            "conv_net(1, [32, 64], 10, 28x28) random init (seeds 1, 2), random train and test "
            "images (seed 0), batch 500",
            "runs": [*earlier, run],
        }
        write_result(args.out, numbers, seeds=(DATA_SEED, *SEEDS),
                     command=" ".join(sys.argv))  # fmt: skip


if __name__ == "__main__":
    main()
