"""Checkpoints that stay on disk: lazy reads, views, bounded matching memory, peak RSS.

Properties: a view computes what the in-memory function computes
(:func:`apply_permutation`, :func:`interpolate`); weight matching under a memory
bound (``max_bytes``, A's rows read again, products recomputed) finds the very same
alignment as without; and ``modeconnect align`` on two directories of ``S`` bytes stays
within ``2.5 S + 1 GB`` of peak RSS (slow: a 100 M-parameter model, in a subprocess).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hf_models as hf
import pytest
import torch

from modeconnect.evaluation import interpolate
from modeconnect.io.checkpoints import load_checkpoint, load_models
from modeconnect.io.hf import LazyWeights
from modeconnect.matching import match_weights
from modeconnect.spec import apply_permutation, derive_spec, random_permutation
from modeconnect.views import Converted, Extended, Lerped, Permuted

PROBE = (torch.randint(0, hf.VOCAB, (2, 8), generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lazy")
    a = hf.llama()
    b = hf.permuted_copy(a)
    with torch.no_grad():  # noised: the alignment is not trivially the inverse permutation
        for p in b.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return (hf.save(a, root / "a", dtype=torch.bfloat16, sharded=True),
            hf.save(b, root / "b", dtype=torch.bfloat16, sharded=True))  # fmt: skip


def test_lazy_weights_read_on_every_access_and_keep_nothing(pair) -> None:
    weights = load_checkpoint(pair[0]).state_dict
    assert isinstance(weights, LazyWeights)
    key = "model.layers.0.mlp.up_proj.weight"
    first, second = weights[key], weights[key]
    assert first is not second and torch.equal(first, second) and first.dtype == torch.bfloat16
    assert weights.shape(key) == tuple(first.shape)
    assert not [v for v in vars(weights).values() if isinstance(v, torch.Tensor)]
    assert weights.in_dtype(torch.float32)[key].dtype == torch.float32


def test_lazy_weights_travel_as_paths_not_tensors(pair) -> None:
    """What Ray's object store carries to a worker (modeconnect.distributed): the paths and
    headers; the worker reads the tensors from disk itself."""
    import pickle

    weights = load_checkpoint(pair[0]).state_dict
    blob = pickle.dumps(weights)
    stored = sum(weights.info(k).nbytes for k in weights)
    assert len(blob) < stored / 4, (len(blob), stored)
    again = pickle.loads(blob)
    assert isinstance(again, LazyWeights) and list(again) == list(weights)
    assert all(torch.equal(again[k], weights[k]) for k in list(weights)[:5])


def test_tied_names_read_the_stored_tensor(tmp_path: Path) -> None:
    model = hf.llama(tie_word_embeddings=True)
    path = hf.save(model, tmp_path / "a")
    loaded = load_models([path, path])
    weights = loaded.checkpoints[0].state_dict
    assert "lm_head.weight" in weights  # the model's name, though save_pretrained left it out
    torch.testing.assert_close(weights["lm_head.weight"], weights["model.embed_tokens.weight"])


def test_views_compute_what_the_functions_compute(pair) -> None:
    a = load_models(list(pair)).checkpoints
    sa, sb = (c.state_dict for c in a)
    net = load_models(list(pair)).architecture.model
    spec = derive_spec(net, PROBE)
    perm = random_permutation(spec, seed=3)
    expected = apply_permutation(dict(sb), spec, perm)
    view = Permuted(sb, spec, perm)
    assert list(view) == list(expected)
    assert all(torch.equal(view[k], expected[k]) for k in expected)
    mixed = interpolate(dict(sa), dict(sb), 0.3)
    lerped = Lerped(sa, sb, 0.3)
    assert all(torch.equal(lerped[k], mixed[k]) for k in mixed)
    assert all(torch.equal(Lerped(sa, sb, 0.0)[k], sa[k]) for k in mixed)
    half = Converted(sa, torch.bfloat16)
    assert {half[k].dtype for k in half} == {torch.bfloat16}
    extra = Extended(sa, {"rotary": torch.ones(2)})
    assert len(extra) == len(sa) + 1 and torch.equal(extra["rotary"], torch.ones(2))


@pytest.mark.parametrize("max_bytes", [0, 20_000])
def test_bounded_matching_finds_the_same_alignment(pair, max_bytes: int) -> None:
    loaded = load_models(list(pair))
    sa, sb = (c.state_dict for c in loaded.checkpoints)
    spec = derive_spec(loaded.architecture.model, PROBE)
    free = match_weights(spec, dict(sa), dict(sb), seed=1, rtol=0.0)
    bounded = match_weights(spec, sa.in_dtype(None), sb.in_dtype(None), seed=1, rtol=0.0,
                            max_bytes=max_bytes)  # fmt: skip
    assert bounded.objective == pytest.approx(free.objective, rel=1e-12)
    assert all(torch.equal(bounded.perm[g], free.perm[g]) for g in free.perm)
    assert bounded.iterations == free.iterations


def test_progress_hears_every_group_of_every_sweep(pair) -> None:
    loaded = load_models(list(pair))
    sa, sb = (c.state_dict for c in loaded.checkpoints)
    spec = derive_spec(loaded.architecture.model, PROBE)
    calls: list[tuple[str, int, int]] = []
    result = match_weights(spec, sa, sb, progress=lambda *c: calls.append(c))
    groups = len([g for g in spec.groups.values() if g.batch_over is None])
    assert {task for task, _, _ in calls} == {"matching groups"}
    assert all(total == groups for _, _, total in calls)
    assert [c[1] for c in calls].count(groups) == result.iterations  # one full bar per sweep


def test_matching_products_on_a_device(pair) -> None:
    loaded = load_models(list(pair))
    sa, sb = (c.state_dict for c in loaded.checkpoints)
    spec = derive_spec(loaded.architecture.model, PROBE)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    here = match_weights(spec, sa, sb, seed=2)
    there = match_weights(spec, sa, sb, seed=2, device=device)
    assert all(torch.equal(here.perm[g], there.perm[g]) for g in here.perm)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_align_evaluates_on_cuda_in_bfloat16(pair, tmp_path: Path) -> None:
    from modeconnect.commands.align import align_files

    torch.save(torch.randint(0, hf.VOCAB, (4, 16)), tmp_path / "ids.pt")
    report = align_files(*pair, data=tmp_path / "ids.pt", steps=3, device="cuda",
                         dtype="bfloat16")  # fmt: skip
    assert report.curves is not None and report.result.equivalence.passed


# --------------------------------------------------------------------------- peak RSS


def _peak_rss(*args: str) -> int:
    """Peak RSS (bytes) of ``modeconnect ARGS`` in a fresh child process.

    Read from ``VmHWM`` (the high-water mark of the child's own address space), not
    ``ru_maxrss``: Linux carries the pre-``exec`` high-water mark into ``ru_maxrss``, and
    a child spawned from this test process would report this process's size (~1.8 GB
    after building the model) instead of its own.
    """
    script = (
        "import re, sys\n"
        "from modeconnect_cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "status = open('/proc/self/status').read()\n"
        "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) * 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def _llama_family(root: Path, n: int, hidden: int = 1024) -> tuple[list[Path], int]:
    """A bfloat16 Llama of 8 layers (S ≈ 200 MB at hidden 1024, 62 MB at 512) and
    ``n - 1`` permuted copies, as Hugging Face directories; and S in bytes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=8000, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_hidden_layers=8, num_attention_heads=hidden // 64,
                         num_key_value_heads=hidden // 256,
                         max_position_embeddings=256)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    paths = [hf.save(model, root / "a", dtype=torch.bfloat16, sharded=False)]
    for j in range(1, n):
        copy = hf.permuted_copy(model.float(), seed=j)
        paths.append(hf.save(copy, root / f"b{j}", dtype=torch.bfloat16))
    del model
    return paths, sum(p.stat().st_size for p in paths[0].glob("*.safetensors"))


PROC_STATUS = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc"
)


@pytest.mark.slow
@PROC_STATUS
def test_align_peak_rss_is_within_the_target(tmp_path: Path) -> None:
    """Two bfloat16 models of S ≈ 200 MB: peak RSS ≤ 2.5 S + 1 GB (all in memory: ~8 S)."""
    (a, b), size = _llama_family(tmp_path, 2)
    torch.save(torch.randint(0, 8000, (2, 64)), tmp_path / "ids.pt")
    peak = _peak_rss("align", str(a), str(b), "--data", str(tmp_path / "ids.pt"), "--steps",
                     "3", "--out", str(tmp_path / "c"), "--merged", str(tmp_path / "m"),
                     "--json", str(tmp_path / "r.json"))  # fmt: skip
    assert json.loads((tmp_path / "r.json").read_text())["equivalence"]["passed"]
    assert peak <= 2.5 * size + 2**30, (peak / 2**20, size / 2**20)


@pytest.mark.slow
@PROC_STATUS
def test_merge_peak_rss_is_within_the_target(tmp_path: Path) -> None:
    """A merge of N = 3 bfloat16 models of S ≈ 62 MB from their directories: peak RSS ≤
    (N + 1) S + 1 GB (issue 12's target, the README's), and the merge is A (its inputs are
    permuted copies of A).

    At S ≈ 200 MB (hidden 1024) one run peaked at 1823 MB against the 1837 MB target: the
    bound holds there by under 1 %; this size keeps the test within a minute."""
    paths, size = _llama_family(tmp_path, 3, hidden=512)
    out = tmp_path / "merged"
    peak = _peak_rss("merge", *map(str, paths), "--out", str(out), "--max-rounds", "1",
                     "--quiet")  # fmt: skip
    assert peak <= 4 * size + 2**30, (peak / 2**20, size / 2**20)
    merged, original = (load_checkpoint(str(p)).state_dict for p in (out, paths[0]))
    for key in original:  # permuted copies align back onto A exactly
        torch.testing.assert_close(merged[key], original[key], rtol=0, atol=0)


def test_evaluation_in_another_dtype_gives_the_same_curves(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from modeconnect_cli.main import main

    root = Path(__file__).resolve().parents[1] / "checkpoints"
    runs = {}
    for name, extra in (("default", []), ("float64", ["--dtype", "float64"])):
        args = ["align", root / "mlp_a.pt", root / "mlp_b.pt", "--data", root / "digits_test.pt",
                "--steps", "3", "--json", tmp_path / f"{name}.json", *extra]  # fmt: skip
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.stderr
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    for curve in ("naive", "aligned"):
        for p, q in zip(runs["default"][curve]["curve"], runs["float64"][curve]["curve"]):
            assert q["loss"] == pytest.approx(p["loss"], rel=1e-4, abs=1e-6)
            assert q["accuracy"] == pytest.approx(p["accuracy"], abs=0.005)


def test_progress_over_shards_groups_and_points(pair, tmp_path: Path) -> None:
    from modeconnect.commands.align import align_files

    calls: list[tuple[str, int, int]] = []
    torch.save(torch.randint(0, hf.VOCAB, (4, 16)), tmp_path / "ids.pt")
    align_files(*pair, data=tmp_path / "ids.pt", steps=3, out=tmp_path / "c",
                progress=lambda *c: calls.append(c))  # fmt: skip
    finished = {task: done for task, done, total in calls if done == total}
    shards = len(list(pair[0].glob("*.safetensors")))
    assert finished["reading a"] == finished["reading b"] == shards
    assert finished["writing c"] == shards
    assert {"matching groups", "naive curve", "aligned curve"} <= set(finished)
    assert finished["naive curve"] == 3
