"""``modeconnect merge --method zip|otfusion|universe``: widths, outputs that load back, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from modeconnect.evaluation import evaluate
from modeconnect.io.checkpoints import load_checkpoint, resolve_model, save_checkpoint
from modeconnect.models import MLP, mlp
from modeconnect_cli.main import main

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
DATA = str(CHECKPOINTS / "digits_test.pt")
MODEL = "modeconnect.models:mlp"


def _save(path: Path, hidden: list[int], seed: int, model: str = MODEL) -> Path:
    torch.manual_seed(seed)
    net = (MLP if model.endswith(":MLP") else mlp)(64, hidden, 10)
    kwargs = {"in_features": 64, "hidden": hidden, "out_features": 10}
    save_checkpoint(path, net.state_dict(), model_ref=model, model_kwargs=kwargs)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("widths")
    return _save(folder / "wide.pt", [16, 12], 0), _save(folder / "narrow.pt", [8, 6], 1)


def _run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_otfusion_across_widths_writes_a_checkpoint_that_loads_back(pair, tmp_path):
    out, report = tmp_path / "fused.pt", tmp_path / "fused.json"
    result = _run(
        "merge", *pair, "--method", "otfusion", "--width", "P0=10,P1=6", "--transport", "hard",
        "--train", DATA, "--data", DATA, "--out", out, "--json", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not applicable" in result.output
    ckpt = load_checkpoint(out)
    assert ckpt.model_ref == MODEL and ckpt.model_kwargs["hidden"] == [10, 6]
    model = resolve_model([ckpt]).model
    model.load_state_dict(ckpt.state_dict)
    record = json.loads(report.read_text())
    assert record["merge"]["widths"] == {"P0": 10, "P1": 6}
    assert record["merge"]["equivalence_guard"].startswith("not applicable")
    batches = [(x, y) for x, y in [torch.load(DATA, weights_only=True).values()]]
    accuracy = evaluate(model, ckpt.state_dict, batches).accuracy
    assert accuracy == pytest.approx(record["metrics"]["merged"]["accuracy"], abs=1e-6)


def test_zip_self_merge_compresses_one_model(pair, tmp_path):
    out = tmp_path / "small.pt"
    result = _run("merge", pair[0], "--method", "zip", "--width", "5", "--zip-alpha", "0.3",
                  "--train", DATA, "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    assert ckpt.model_kwargs["hidden"] == [5, 5]
    assert ckpt.state_dict["1.weight"].shape == (5, 64)


def test_partial_zip_writes_a_wider_model_of_the_family(pair, tmp_path):
    out = tmp_path / "heads.pt"
    result = _run(
        "merge", *pair, "--method", "zip", "--zip-until", "1", "--train", DATA, "--out", out
    )
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    assert ckpt.model_kwargs["hidden"] == [16, 18]  # layer 1 zipped at A's width; 12 + 6 heads
    model = resolve_model([ckpt]).model
    model.load_state_dict(ckpt.state_dict)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--width", "8"], "keeps every width"),
        (["--method", "zip", "--transport", "hard"], "takes no option 'transport'"),
        (["--method", "zip", "--width", "P7=3"], "unknown groups"),
        (["--method", "universe"], "keeps the first model.s width|one width"),
    ],
)
def test_fusion_errors_are_one_line_and_write_nothing(pair, tmp_path, extra, message):
    out = tmp_path / "x.pt"
    result = _run("merge", *pair, "--train", DATA, "--out", out, *extra)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and re.search(message, result.output)
    assert not out.exists()


@pytest.mark.slow
def test_mismatched_families_exit_2_with_one_line(pair, tmp_path):
    other = _save(tmp_path / "class.pt", [16, 12], 2, model="modeconnect.models:MLP")
    out = tmp_path / "x.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "modeconnect_cli.main", "merge", str(pair[0]), str(other),
         "--method", "otfusion", "--train", DATA, "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "one architecture family" in lines[0] and "Traceback" not in proc.stderr
    )
    assert not out.exists()


@pytest.mark.slow
def test_hugging_face_directories_of_other_intermediate_size_fuse_to_a_directory(tmp_path):
    """A LLaMA and a copy whose MLPs are zero-padded from 24 to 40 units: the fusion at A's
    width is A again, written as a save_pretrained directory whose config says so."""
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import hf_models as hf

    small, wide = hf.llama(0, intermediate_size=24), hf.llama(1, intermediate_size=40)
    a = small.state_dict()
    padded = {}
    for key, t in wide.state_dict().items():
        padded[key] = torch.zeros_like(t)
        padded[key][tuple(slice(0, s) for s in a[key].shape)] = a[key]
    wide.load_state_dict(padded)
    hf.save(small, tmp_path / "a", tokenizer=True)
    hf.save(wide, tmp_path / "b", tokenizer=True)
    (tmp_path / "text.txt").write_text(hf.TEXT)
    out = tmp_path / "fused"
    result = _run("merge", tmp_path / "b", tmp_path / "a", "--method", "otfusion", "--width",
                  "P4=24,P8=24", "--train", tmp_path / "text.txt", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == 24
    from transformers import AutoModelForCausalLM

    fused = AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, hf.VOCAB, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(fused(x).logits, small(x).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_align_across_widths_is_one_line_that_points_to_merge_width(pair, tmp_path):
    wide, narrow = pair
    out = tmp_path / "aligned.pt"
    for args in ((wide, narrow), (narrow, wide)):
        result = _run("align", *args, "--out", out)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output
        assert "merge A B --method otfusion|zip --width N" in lines[0]
        assert "'1.bias' is " in lines[0] and not out.exists()
    wide_bytes = wide.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "modeconnect_cli.main", "align", str(wide), str(narrow),
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (
        f"Error: {narrow} differs from {wide} in width (5 tensors, e.g. '1.bias' is (8,) in B, "
        "(16,) in A); aligning, interpolating and averaging map units one-to-one at one width: "
        "to fuse models of different widths use modeconnect merge A B --method otfusion|zip "
        "--width N (no equivalence guard applies to a fused model)"
    )
    assert wide.read_bytes() == wide_bytes and not out.exists()


def _llama_pair(tmp_path: Path):
    """A Llama (hidden 32, 4 / 2 heads of 8, MLP 24) and a copy of it padded to hidden 48,
    6 / 3 heads and MLP 40 that computes it (norm scales over sqrt(48/32), eps times 32/48),
    saved as directories with a tokenizer, and a text file."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import hf_models as hf

    small = hf.llama(0, intermediate_size=24, head_dim=8, rms_norm_eps=1e-5)
    wide = hf.llama(1, hidden_size=48, num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                    intermediate_size=40, rms_norm_eps=1e-5 * 32 / 48)  # fmt: skip
    a = small.state_dict()
    padded = {}
    for key, t in wide.state_dict().items():
        padded[key] = torch.zeros_like(t)
        padded[key][tuple(slice(0, s) for s in a[key].shape)] = a[key]
        if key.endswith("norm.weight"):
            padded[key] *= (32 / 48) ** 0.5
    wide.load_state_dict(padded)
    hf.save(small, tmp_path / "a", tokenizer=True)
    hf.save(wide, tmp_path / "b", tokenizer=True)
    (tmp_path / "text.txt").write_text(hf.TEXT)
    return hf, small, wide


@pytest.mark.slow
def test_hugging_face_llamas_of_other_hidden_size_and_head_counts_fuse_to_directories(tmp_path):
    """Fused at A's widths (the default, or named with B first), the padded copy and A give
    A back, written with A's hidden size, head counts and MLP width; fused at B's widths
    with A first, A's config is rewritten to B's sizes, and the directory loads and runs."""
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    hf, small, wide = _llama_pair(tmp_path)
    x = torch.randint(0, hf.VOCAB, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(wide(x).logits, small(x).logits, atol=1e-5, rtol=1e-5)
    wide = ["--width", "P0=48,P1=3,P4=40,P5=3,P8=40"]  # A's config rewritten to B's shape
    for first, second, extra, shape in (
        ("a", "b", [], (32, 4, 2, 24)),
        ("a", "b", wide, (48, 6, 3, 40)),
        ("b", "a", ["--width", "P0=32,P1=2,P4=24,P5=2,P8=24"], (32, 4, 2, 24)),
    ):
        out = tmp_path / f"fused_{first}_{len(extra) and extra[1]}"
        result = _run("merge", tmp_path / first, tmp_path / second, "--method", "otfusion",
                      "--train", tmp_path / "text.txt", "--out", out, *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
        config = json.loads((out / "config.json").read_text())
        keys = ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size")
        assert tuple(config[k] for k in keys) == shape and config["head_dim"] == 8
        fused = AutoModelForCausalLM.from_pretrained(out).eval()
        with torch.no_grad():
            logits = fused(x).logits
        if shape == (32, 4, 2, 24):  # A's widths: A again, whichever comes first
            torch.testing.assert_close(logits, small(x).logits, atol=1e-4, rtol=1e-4)
        assert bool(torch.isfinite(logits).all())
    shown = _run("spec", tmp_path / "a", "--json", tmp_path / "spec.json")
    assert shown.exit_code == 0, shown.output
    stored = json.loads((tmp_path / "spec.json").read_text())
    assert stored["width_groups"] == ["P0", "P1", "P4", "P5", "P8"]  # residual, heads, MLPs
    lines = shown.output.splitlines()
    assert "  P1  size 2  width" in lines and "  P2  size 2 (one per block of P1)" in lines


def test_spec_shows_the_groups_that_can_change_width(tmp_path):
    out = tmp_path / "spec.json"
    kwargs = json.dumps({"in_features": 4, "hidden": [8, 6], "out_features": 3})
    result = _run("spec", "--model", MODEL, "--model-kwargs", kwargs, "--json", out)
    assert result.exit_code == 0, result.output
    assert "  P0  size 8  width" in result.output.splitlines()
    assert json.loads(out.read_text())["width_groups"] == ["P0", "P1"]


@pytest.mark.slow
def test_hugging_face_llamas_of_other_head_dim_exit_2_with_one_line(tmp_path):
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import hf_models as hf

    hf.save(hf.llama(0), tmp_path / "a", tokenizer=True)
    hf.save(hf.llama(1, head_dim=16), tmp_path / "b", tokenizer=True)
    (tmp_path / "text.txt").write_text(hf.TEXT)
    out = tmp_path / "fused"
    result = _run("merge", tmp_path / "a", tmp_path / "b", "--method", "zip", "--train",
                  tmp_path / "text.txt", "--out", out)  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert "q_proj.weight' axis 0 has a fixed factor of size 16" in result.output
    assert str(tmp_path / "b") in result.output and "one head_dim" in result.output
    assert not out.exists()


@pytest.mark.slow
def test_gpt2s_of_other_n_embd_and_heads_fuse_to_directories_that_run(tmp_path):
    """GPT-2's hidden size is heads × head dimension: ``n_embd`` and ``n_head`` scale together
    (``c_attn`` holds queries, keys and values of every head), and ``n_inner`` alone."""
    transformers = pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import hf_models as hf

    def gpt2(seed: int, n: int, heads: int, inner: int):
        config = transformers.GPT2Config(vocab_size=hf.VOCAB, n_embd=n, n_head=heads,
                                         n_layer=2, n_positions=64, n_inner=inner)  # fmt: skip
        return hf._randomised(transformers.GPT2LMHeadModel(config), seed)

    hf.save(gpt2(0, 32, 4, 64), tmp_path / "a", tokenizer=True)
    hf.save(gpt2(1, 48, 6, 96), tmp_path / "b", tokenizer=True)
    (tmp_path / "text.txt").write_text(hf.TEXT)
    x = torch.randint(0, hf.VOCAB, (2, 10))
    wide = ["--width", "P0=48,P1=6,P4=96,P5=6,P8=96"]  # A's config rewritten to B's shape
    for first, second, extra, shape in (
        ("a", "b", [], (32, 4, 64)),
        ("a", "b", wide, (48, 6, 96)),
    ):
        out = tmp_path / f"fused_{first}_{len(extra)}"
        result = _run("merge", tmp_path / first, tmp_path / second, "--method", "zip",
                      "--train", tmp_path / "text.txt", "--out", out, *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
        config = json.loads((out / "config.json").read_text())
        assert (config["n_embd"], config["n_head"], config["n_inner"]) == shape
        fused = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        with torch.no_grad():
            assert bool(torch.isfinite(fused(x).logits).all())


@pytest.mark.slow
def test_widths_that_a_config_cannot_hold_exit_2_with_one_line(tmp_path):
    """GPT-2's ``n_embd`` is ``n_head`` heads of one dimension: a residual width that does not
    follow the heads cannot be written; nor can two MLPs of one ``intermediate_size`` at two
    widths. Nothing is written."""
    transformers = pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import hf_models as hf

    config = transformers.GPT2Config(vocab_size=hf.VOCAB, n_embd=32, n_head=4, n_layer=2,
                                     n_positions=64, n_inner=64)  # fmt: skip
    hf.save(hf._randomised(transformers.GPT2LMHeadModel(config), 0), tmp_path / "g",
            tokenizer=True)  # fmt: skip
    hf.save(hf.llama(0), tmp_path / "l", tokenizer=True)
    (tmp_path / "text.txt").write_text(hf.TEXT)
    out = tmp_path / "fused"
    for model, width, message in (
        ("g", "P0=24", r"config.n_embd\+config.n_head sets .* different ratios \(P0 32->24, "),
        ("l", "P4=24,P8=32", r"config.intermediate_size sets .* \(P4 64->24, P8 64->32\)"),
    ):
        result = _run("merge", tmp_path / model, "--method", "zip", "--width", width,
                      "--train", tmp_path / "text.txt", "--out", out)  # fmt: skip
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and re.search(message, result.output)
        assert not out.exists()


@pytest.mark.slow
@settings(max_examples=5, deadline=None)
@given(
    st.lists(st.integers(2, 12), min_size=1, max_size=3),
    st.lists(st.integers(1, 12), min_size=3, max_size=3),
)
def test_width_slots_name_each_hidden_width_and_fused_kwargs_set_it(hidden, targets):
    """Every hidden width of ``mlp`` is found as its own keyword, and the fused keywords build
    the model whose shapes are the spec's at the fused widths (a unit of width 1 is no
    permutation group, so widths start at 2)."""
    from modeconnect.commands.fuse import fused_kwargs, width_slots
    from modeconnect.fusion.maps import target_shapes
    from modeconnect.spec import derive_spec

    kwargs = {"in_features": 4, "hidden": hidden, "out_features": 3}

    def build(kw):
        with torch.device("meta"):
            return mlp(**kw)

    spec = derive_spec(mlp(**kwargs), (torch.randn(2, 4),))
    slots = width_slots(build, kwargs, spec)
    assert slots == {(("hidden", i),): (f"P{i}",) for i in range(len(hidden))}
    widths = {f"P{i}": targets[i] for i in range(len(hidden))}
    own = {f"P{i}": h for i, h in enumerate(hidden)}
    fused = fused_kwargs(kwargs, slots, widths, own)
    assert fused["hidden"] == targets[: len(hidden)] and kwargs["hidden"] == hidden
    built = {k: tuple(v.shape) for k, v in build(fused).state_dict().items()}
    assert built == target_shapes(spec, widths)
