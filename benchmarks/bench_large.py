"""Large models within one machine's memory: ``align`` and a 4-model ``merge`` of HF directories.

Models are Hugging Face ``save_pretrained`` directories with random weights (nothing is
downloaded): A, and B, C, D each a randomly permuted copy of A plus Gaussian noise
(``--noise`` times each tensor's standard deviation), as sharded safetensors. Shapes:

* ``tinyllama``: the TinyLlama-1.1B shape (Llama, hidden 2048, 32 heads, 4 key-value
  heads, intermediate 5632, vocabulary 32000) in bfloat16, at ``--layers`` depths
  (22 is the full 1.1 B model);
* ``gpt2``: GPT-2 small (124 M, 12 layers, hidden 768, vocabulary 50257) in float32.

Each measurement runs in a fresh process (``--worker``) that calls the library exactly as
``modeconnect align`` / ``modeconnect merge`` do (``align_files`` / ``merge_files``:
same session, outputs written as directories), with wall-clock probes on the reads of
tensors, the similarity products and the assignments, and reports its own peak RSS
(``VmHWM``: Python, torch and transformers included). The targets of issue 12:
``align`` on two models of ``S`` bytes within ``2.5 S + 1 GB``, a merge of ``N`` within
``(N + 1) S + 1 GB``.

Usage::

    python benchmarks/bench_large.py tinyllama --layers 2,4,8 --merge 4
    python benchmarks/bench_large.py gpt2 --merge 4
    python benchmarks/bench_large.py tinyllama --repeats 3 --out results/bench_large_tinyllama.json

``--repeats N`` measures ``align`` N times (each in a fresh process) on the same models:
peak RSS moves by some MB between runs, so a bound met by a few MB is met only when
every run meets it. ``--out`` stores every run (:func:`report` prints its summary).

Artefacts go to ``benchmarks/.cache/`` (git-ignored) and are removed afterwards unless
``--keep``. The machine's disk must hold ``(merge + 4) × S``.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stored import add_out, store  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
SHARD_BYTES = 1 << 30
SHAPES: dict[str, dict[str, Any]] = {
    "tinyllama": {
        "cls": "LlamaForCausalLM", "config": "LlamaConfig", "dtype": torch.bfloat16,
        "kwargs": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                       num_attention_heads=32, num_key_value_heads=4,
                       max_position_embeddings=2048, rms_norm_eps=1e-5,
                       tie_word_embeddings=False),
        "depth": "num_hidden_layers", "full": 22,
    },
    "gpt2": {
        "cls": "GPT2LMHeadModel", "config": "GPT2Config", "dtype": torch.float32,
        "kwargs": dict(vocab_size=50257, n_embd=768, n_head=12, n_positions=1024),
        "depth": "n_layer", "full": 12,
    },
}  # fmt: skip


# --------------------------------------------------------------------------- models


def _config(shape: str, layers: int) -> tuple[type, Any]:
    import transformers

    spec = SHAPES[shape]
    config = getattr(transformers, spec["config"])(**spec["kwargs"], **{spec["depth"]: layers})
    config.architectures = [spec["cls"]]
    config.dtype = str(spec["dtype"]).removeprefix("torch.")
    return getattr(transformers, spec["cls"]), config


def _meta_model(cls: type, config: Any) -> torch.nn.Module:
    from modeconnect.io.hf import _parameters_on_meta

    with _parameters_on_meta():
        return cls(config).eval()


def _stored_keys(model: torch.nn.Module) -> dict[str, torch.Size]:
    """State-dict keys as ``save_pretrained`` stores them (one name per tied tensor)."""
    seen: set[int] = set()
    out = {}
    params = dict(model.named_parameters(remove_duplicate=False))
    for key, t in model.state_dict(keep_vars=True).items():
        ident = id(params.get(key, t))
        if ident not in seen:
            seen.add(ident)
            out[key] = t.shape
    return out


def _tensor(key: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(key)))
    t = torch.randn(shape, generator=gen)
    if len(shape) == 1 and ("norm" in key or ".ln_" in key) and key.endswith("weight"):
        t = 1.0 + 0.1 * t
    else:
        t = t * 0.02
    return t.to(dtype)


def write_family(shape: str, layers: int, n: int, noise: float, root: Path) -> list[Path]:
    """A and ``n - 1`` permuted, noised copies of it, as sharded safetensors directories."""
    import safetensors.torch

    from modeconnect.spec import derive_spec, permute_tensor, random_permutation

    cls, config = _config(shape, layers)
    dtype = SHAPES[shape]["dtype"]
    model = _meta_model(cls, config)
    keys = _stored_keys(model)
    config.use_cache = False
    spec = derive_spec(model, (torch.randint(0, 100, (2, 8)),))
    paths = []
    for j in range(n):
        path = root / f"model_{j}"
        path.mkdir(parents=True, exist_ok=True)
        perm = random_permutation(spec, seed=j) if j else None
        gen = torch.Generator().manual_seed(1000 + j)
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for key, shp in keys.items():
            t = _tensor(key, shp, dtype)
            if perm is not None:
                layouts = spec.layouts.get(spec.aliases.get(key, key))
                t = t if layouts is None else permute_tensor(t, layouts, perm)
                t = (t.float() + noise * t.float().std() * torch.randn(shp, generator=gen)).to(
                    dtype
                )
            nbytes = t.numel() * t.element_size()
            if shards[-1] and size + nbytes > SHARD_BYTES:
                shards.append({})
                size = 0
            shards[-1][key] = t.contiguous()
            size += nbytes
        _save_shards(path, shards, safetensors.torch.save_file)
        config.use_cache = True
        config.save_pretrained(path)
        config.use_cache = False
        paths.append(path)
    return paths


def _save_shards(path: Path, shards: list[dict[str, torch.Tensor]], save: Any) -> None:
    weight_map, total, n = {}, 0, len(shards)
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save(shard, str(path / name), {"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        total += sum(t.numel() * t.element_size() for t in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def model_bytes(path: Path) -> int:
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return int(index["metadata"]["total_size"])


# --------------------------------------------------------------------------- the worker


def worker(argv: list[str]) -> None:
    """One measured command in this process; prints a JSON line with times and peak RSS."""
    from probes import probes  # this script's folder is on sys.path

    from modeconnect.io import hf
    from modeconnect.matching import weight

    command, rest = argv[0], argv[1:]
    out = Path(rest[-1])
    buckets: dict[str, float] = {}
    targets = [
        (hf, "_read_tensor", "reads"),
        (weight, "_full", "products"),
        (weight, "_updated", "products"),
    ]
    start = time.perf_counter()
    if command == "baseline":
        import transformers  # noqa: F401

        import modeconnect.commands.align  # noqa: F401

        result: dict[str, Any] = {}
    elif command == "align":
        from modeconnect.commands.align import align_files

        a, b, data = rest[0], rest[1], rest[2]
        with probes(buckets, targets, clock=time.perf_counter):
            report = align_files(a, b, data=data or None, steps=3, out=out / "aligned",
                                 merged=out / "merged")  # fmt: skip
        result = {"timings": report.timings, "alignment": report.result.alignment.to_dict()}
        if report.curves is not None:
            result["barrier"] = {"naive": report.curves.naive_barrier.loss,
                                 "aligned": report.curves.aligned_barrier.loss}  # fmt: skip
    else:
        from modeconnect.commands.merge import merge_files

        with probes(buckets, targets, clock=time.perf_counter):
            merged = merge_files(rest[:-1], out=out / "merge_out", max_rounds=2)
        result = {"timings": merged.timings, "rounds": merged.result.rounds}
    result["seconds"] = time.perf_counter() - start
    result["buckets"] = buckets
    result["peak_rss"] = _peak_rss()
    print(json.dumps(result))


def _peak_rss() -> int:
    """This process's peak RSS in bytes: ``VmHWM`` where Linux has it.

    ``ru_maxrss`` carries the parent's high-water mark across ``exec`` on Linux, so a
    worker spawned from a large parent would report the parent's size.
    """
    status = Path("/proc/self/status")
    if status.exists():
        found = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
        if found:
            return int(found.group(1)) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _measure(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", *args],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"worker {args[0]} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------- the study


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f}"


def _row(label: str, s: int, res: dict[str, Any], target: float) -> str:
    b = res["buckets"]
    t = res.get("timings", {})
    prof = res.get("alignment", {}).get("profile", {})
    sweeps = prof.get("sweeps", res.get("rounds", ""))
    per_sweep = prof.get("similarity_seconds", 0) + prof.get("assignment_seconds", 0)
    per_sweep = f"{per_sweep / sweeps:.1f}" if isinstance(sweeps, int) and sweeps else "-"
    assign = f"{prof['assignment_seconds']:.1f}" if "assignment_seconds" in prof else "-"
    return (
        f"| {label} | {_gb(s)} | {res['seconds']:.1f} | {sweeps} | {per_sweep} | "
        f"{b.get('reads', 0):.1f} | {b.get('products', 0):.1f} | {assign} | "
        f"{t.get('writes', 0):.1f} | {_gb(res['peak_rss'])} | {_gb(target)} | "
        f"{res['peak_rss'] / target:.2f} |"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("--layers", default=None, help="depths, e.g. 2,4,8 (default: full)")
    parser.add_argument("--merge", type=int, default=0, help="also merge this many models")
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--tokens", type=int, default=512, help="evaluation tokens (0: none)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--repeats", type=int, default=1, help="align runs per depth")
    add_out(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    depths = [int(x) for x in (args.layers or str(SHAPES[args.shape]["full"])).split(",")]
    baseline = _measure("baseline", str(CACHE))
    numbers: dict[str, Any] = {"shape": args.shape, "baseline_rss": baseline["peak_rss"],
                               "tokens": args.tokens, "noise": args.noise, "runs": []}  # fmt: skip
    print(f"baseline (python + torch + transformers + modeconnect): {_gb(baseline['peak_rss'])} GB")
    head = ("| run | S GB | total s | sweeps | s/sweep | reads s | products s | assignment s | "
            "writes s | peak RSS GB | target GB | ratio |")  # fmt: skip
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for layers in depths:
        root = CACHE / f"{args.shape}_{layers}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        n = max(2, args.merge)
        paths = write_family(args.shape, layers, n, args.noise, root)
        s = model_bytes(paths[0])
        data = ""
        if args.tokens:
            t = 128
            torch.save(torch.randint(0, 1000, (max(1, args.tokens // t), t)), root / "tokens.pt")
            data = str(root / "tokens.pt")
        for _ in range(args.repeats):
            for written in ("aligned", "merged"):  # a repeat writes them afresh
                shutil.rmtree(root / written, ignore_errors=True)
            res = _measure("align", str(paths[0]), str(paths[1]), data, str(root))
            print(_row(f"align L={layers}", s, res, 2.5 * s + 2**30), flush=True)
            print(f"<!-- {json.dumps(res)} -->", flush=True)
            numbers["runs"].append(_stored("align", layers, s, 2.5 * s + 2**30, res))
        if args.merge:
            res = _measure("merge", *map(str, paths[: args.merge]), str(root))
            target = (args.merge + 1) * s + 2**30
            print(_row(f"merge {args.merge} L={layers}", s, res, target), flush=True)
            print(f"<!-- {json.dumps(res)} -->", flush=True)
            numbers["runs"].append(_stored(f"merge {args.merge}", layers, s, target, res))
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(report(numbers))
    store(args.out, numbers)


def _stored(run: str, layers: int, size: int, target: float, res: dict[str, Any]) -> dict:
    """One measured run as stored: its bound, peak RSS, seconds and where the time went."""
    keep = {k: res[k] for k in ("seconds", "buckets", "timings", "peak_rss") if k in res}
    profile = res.get("alignment", {}).get("profile")
    return {"run": run, "layers": layers, "size": size, "target": target, **keep,
            "profile": profile, "rounds": res.get("rounds")}  # fmt: skip


def report(numbers: dict[str, Any]) -> str:
    """Per run kind and depth: peak RSS (min–max over runs) against the target, the ratio
    and the smallest margin left under the target (MB)."""
    lines = []
    for run, layers in dict.fromkeys((r["run"], r["layers"]) for r in numbers["runs"]):
        rows = [r for r in numbers["runs"] if (r["run"], r["layers"]) == (run, layers)]
        peaks = [r["peak_rss"] for r in rows]
        target = rows[0]["target"]
        lines.append(
            f"{numbers['shape']} {run} L={layers}: {len(rows)} run(s), peak RSS "
            f"{_gb(min(peaks))}–{_gb(max(peaks))} GB against {_gb(target)} GB, ratio "
            f"{min(peaks) / target:.3f}–{max(peaks) / target:.3f}, margin "
            f"{(target - max(peaks)) / 2**20:.0f} MB at the worst"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
