"""Hugging Face checkpoint directories in and out: ``modeconnect align DIR_A DIR_B --out DIR_C``.

Round trips (Llama and BERT; single file and sharded; float32 and bfloat16): B is a
permuted copy of A, so aligned B must be A again: the output directory loads with
``from_pretrained`` and computes A's outputs, keeps B's dtype and sharding, and the
same inputs give the same bytes. Bad directories get one line and exit code 2, and
nothing is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import hf_models as hf
import pytest
import torch
from click.testing import CliRunner
from study_files import snapshot

from modeconnect_cli.main import main

IDS = torch.randint(0, hf.VOCAB, (3, 12), generator=torch.Generator().manual_seed(0))


def _cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    model.config.use_cache = False
    with torch.no_grad():
        out = model(IDS)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float()


def _load(path: Path, kind: str) -> torch.nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if kind == "llama" else AutoModel
    return cls.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    a, b = hf.llama(), hf.bert()
    return {"llama": a, "llama_b": hf.permuted_copy(a), "bert": b, "bert_b": hf.permuted_copy(b)}


def _pair(
    models: dict[str, torch.nn.Module], root: Path, kind: str, dtype: torch.dtype, sharded: bool
) -> tuple[Path, Path]:
    a = hf.save(models[kind], root / "a", dtype=dtype, sharded=sharded)
    b = hf.save(models[f"{kind}_b"], root / "b", dtype=dtype, sharded=sharded)
    return a, b


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ["llama", "bert"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_round_trip(models, tmp_path: Path, kind: str, dtype: torch.dtype, sharded: bool) -> None:
    a, b = _pair(models, tmp_path, kind, dtype, sharded)
    code, out, err = _cli("align", a, b, "--out", tmp_path / "c", "--merged", tmp_path / "m")
    assert code == 0, err
    assert "aligned B == B" in out
    model_a, aligned = _load(a, kind), _load(tmp_path / "c", kind)
    assert {p.dtype for p in aligned.parameters()} == {dtype}
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(_outputs(aligned), _outputs(model_a), **tolerance)
    # the merge is lerp(A, aligned B, 0.5) computed in float32, stored as A stored it
    merged = _load(tmp_path / "m", kind).state_dict()
    sa, sc = model_a.state_dict(), aligned.state_dict()
    for key, value in merged.items():
        expected = torch.lerp(sa[key].float(), sc[key].float(), 0.5).to(dtype)
        assert value.dtype == dtype and torch.equal(value, expected), key
    # same files as B, and the same tensors in each shard (sharding preserved)
    assert sorted(os.listdir(tmp_path / "c")) == sorted(os.listdir(b))
    assert (tmp_path / "c" / "config.json").read_bytes() == (b / "config.json").read_bytes()
    if sharded:
        index = "model.safetensors.index.json"
        mine = json.loads((tmp_path / "c" / index).read_text())["weight_map"]
        assert mine == json.loads((b / index).read_text())["weight_map"]


def test_same_inputs_same_bytes(models, tmp_path: Path) -> None:
    a, b = _pair(models, tmp_path, "llama", torch.bfloat16, True)
    for run in ("1", "2"):
        code, _, err = _cli("align", a, b, "--out", tmp_path / f"c{run}", "--merged",
                            tmp_path / f"m{run}", "--seed", "3")  # fmt: skip
        assert code == 0, err
    assert hf.files(tmp_path / "c1") == hf.files(tmp_path / "c2")
    assert hf.files(tmp_path / "m1") == hf.files(tmp_path / "m2")


def test_torch_bin_input_gives_safetensors_output(models, tmp_path: Path) -> None:
    a = _save_bin(models["llama"], tmp_path / "a")
    b = _save_bin(models["llama_b"], tmp_path / "b")
    code, _, err = _cli("align", a, b, "--out", tmp_path / "c")
    assert code == 0, err
    assert "model.safetensors" in os.listdir(tmp_path / "c")
    torch.testing.assert_close(_outputs(_load(tmp_path / "c", "llama")), _outputs(models["llama"]))


def _save_bin(model: torch.nn.Module, path: Path) -> Path:
    """A ``pytorch_model.bin`` directory (transformers 5 writes safetensors only)."""
    hf.save(model, path)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path


def test_tokenizer_files_are_copied(models, tmp_path: Path) -> None:
    a = hf.save(models["llama"], tmp_path / "a", tokenizer=True)
    b = hf.save(models["llama_b"], tmp_path / "b", tokenizer=True)
    code, _, err = _cli("align", a, b, "--out", tmp_path / "c")
    assert code == 0, err
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "c" / name).read_bytes() == (b / name).read_bytes()


def test_merge_of_three_directories(models, tmp_path: Path) -> None:
    a = hf.save(models["llama"], tmp_path / "a", dtype=torch.bfloat16, sharded=True)
    b = hf.save(models["llama_b"], tmp_path / "b", dtype=torch.bfloat16, sharded=True)
    c = hf.save(hf.permuted_copy(models["llama"], seed=5), tmp_path / "c", dtype=torch.bfloat16)
    code, out, err = _cli("merge", a, b, c, "--out", tmp_path / "m")
    assert code == 0, err
    merged = _load(tmp_path / "m", "llama")
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    assert sorted(os.listdir(tmp_path / "m")) == sorted(os.listdir(a))
    assert "3 models" in out


def test_an_existing_output_folder_needs_force(models, tmp_path: Path) -> None:
    a, b = _pair(models, tmp_path, "llama", torch.float32, False)
    target = hf.save(models["llama"], tmp_path / "c")
    before = snapshot(target)
    code, _, err = _cli("align", a, b, "--out", target)
    assert code == 2 and "already exists" in err and "--force" in err
    assert snapshot(target) == before
    code, _, err = _cli("align", a, b, "--out", target, "--force")
    assert code == 0, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left aside


def test_force_never_replaces_a_folder_that_is_not_a_checkpoint(models, tmp_path: Path) -> None:
    a, b = _pair(models, tmp_path, "llama", torch.float32, False)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    code, _, err = _cli("align", a, b, "--out", victim, "--force")
    assert code == 2 and "not a checkpoint directory" in err
    assert (victim / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    ("target", "expect"),
    [
        ("a", "is the input"),
        (".", "holds the input"),
        ("a/sub", "would write into the input directory"),
        ("b/r.json", "would write into the input directory"),
    ],
)
def test_outputs_never_touch_input_directories(models, tmp_path: Path, target, expect) -> None:
    a, b = _pair(models, tmp_path, "llama", torch.float32, False)
    option = "--json" if target.endswith(".json") else "--out"
    before = snapshot(tmp_path)
    code, _, err = _cli("align", a, b, option, tmp_path / target, "--force")
    assert code == 2, err
    assert expect in err and len(err.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- bad inputs


def _break_no_config(a: Path) -> None:
    (a / "config.json").unlink()


def _break_missing_shard(a: Path) -> None:
    index = json.loads((a / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (a / shard).unlink()


def _break_missing_tensor(a: Path) -> None:
    _rewrite_shard(a, lambda sd: sd.pop(sorted(sd)[0]))


def _break_wrong_shape(a: Path) -> None:
    def shrink(sd: dict[str, torch.Tensor]) -> None:
        key = next(k for k in sorted(sd) if sd[k].dim() == 2)
        sd[key] = sd[key][:-1].clone()

    _rewrite_shard(a, shrink)


def _rewrite_shard(a: Path, change) -> None:
    import safetensors.torch

    index = json.loads((a / "model.safetensors.index.json").read_text())
    shard = a / sorted(set(index["weight_map"].values()))[0]
    sd = safetensors.torch.load_file(shard)
    change(sd)
    safetensors.torch.save_file(sd, shard, {"format": "pt"})


def _break_architecture(a: Path) -> None:
    hf.edit_config(a, architectures=["FrobnicatorForCausalLM"])


def _break_auto_map(a: Path) -> None:
    hf.edit_config(a, auto_map={"AutoModelForCausalLM": "modeling_evil.EvilModel"})


def _break_remote_code(a: Path) -> None:
    hf.edit_config(a, trust_remote_code=True)


def _break_nested_auto_map(a: Path) -> None:
    hf.edit_config(a, text_config={"auto_map": {"AutoModel": "evil.Model"}})


def _break_index_path(a: Path) -> None:
    index = json.loads((a / "model.safetensors.index.json").read_text())
    key = sorted(index["weight_map"])[0]
    index["weight_map"][key] = "../../etc/passwd"
    (a / "model.safetensors.index.json").write_text(json.dumps(index))


def _break_truncated_shard(a: Path) -> None:
    index = json.loads((a / "model.safetensors.index.json").read_text())
    shard = a / sorted(set(index["weight_map"].values()))[0]
    shard.write_bytes(shard.read_bytes()[:-100])


def _break_activation(a: Path) -> None:
    hf.edit_config(a, hidden_act="gelu")  # B keeps silu: the same weights, another function


def _break_norm_eps(a: Path) -> None:
    hf.edit_config(a, rms_norm_eps=0.5)


def _break_no_weights(a: Path) -> None:
    for p in a.glob("model*"):
        p.unlink()


@pytest.mark.parametrize(
    ("breaker", "expect"),
    [
        (_break_no_config, "has no config.json"),
        (_break_missing_shard, "which does not exist"),
        (_break_missing_tensor, "lacks the tensor"),
        (_break_wrong_shape, "has shape"),
        (_break_architecture, "'FrobnicatorForCausalLM', which is not a model class"),
        (_break_auto_map, "'auto_map' asks for the model's own Python code"),
        (_break_remote_code, "'trust_remote_code' asks for the model's own Python code"),
        (_break_nested_auto_map, "auto_map would let the model constructor load code"),
        (_break_index_path, "is not a file name in the directory"),
        (_break_truncated_shard, "corrupt or truncated"),
        (_break_no_weights, "but no weights"),
        (_break_activation, "config 'hidden_act' is 'silu' but 'gelu' in"),
        (_break_norm_eps, "config 'rms_norm_eps' is 1e-06 but 0.5 in"),
    ],
)
def test_bad_directories_get_one_line_and_nothing_is_written(
    models, tmp_path: Path, breaker, expect: str
) -> None:
    a, b = _pair(models, tmp_path, "llama", torch.float32, True)
    breaker(a)
    before = snapshot(tmp_path)
    code, _, err = _cli(
        "align", a, b, "--out", tmp_path / "c", "--merged", tmp_path / "m.safetensors"
    )
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expect in lines[0], lines[0]
    assert snapshot(tmp_path) == before


def test_configs_that_differ_in_bookkeeping_or_spelling_only_are_one_configuration(
    models, tmp_path: Path
) -> None:
    """B's config written by another version (the rotary base as a top-level 'rope_theta'
    instead of 'rope_parameters'), with another name, version, pad token and dropout rate
    (models are evaluated in eval mode): the same evaluated function, so the pair is
    accepted and aligned B is B."""
    a, b = _pair(models, tmp_path, "llama", torch.float32, False)
    config = json.loads((b / "config.json").read_text())
    theta = config.pop("rope_parameters")["rope_theta"]
    config.update(rope_theta=theta, _name_or_path="elsewhere/b", transformers_version="4.0.0",
                  pad_token_id=0, attention_dropout=0.3)  # fmt: skip
    (b / "config.json").write_text(json.dumps(config))
    code, out, err = _cli("align", a, b, "--out", tmp_path / "c")
    assert code == 0, err
    torch.testing.assert_close(_outputs(_load(tmp_path / "c", "llama")),
                               _outputs(_load(a, "llama")), rtol=1e-5, atol=1e-5)  # fmt: skip


def test_a_directory_output_needs_directory_inputs(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1] / "checkpoints"
    code, _, err = _cli("align", root / "mlp_a.pt", root / "mlp_b.pt", "--out", tmp_path / "c")
    assert code == 2 and "checkpoint extension" in err
    assert not (tmp_path / "c").exists()


def test_directory_in_file_out_loads_back(models, tmp_path: Path) -> None:
    from modeconnect.io.checkpoints import load_models

    a, b = _pair(models, tmp_path, "llama", torch.bfloat16, False)
    code, _, err = _cli("align", a, b, "--out", tmp_path / "c.safetensors")
    assert code == 0, err
    loaded = load_models([tmp_path / "c.safetensors", a])  # names transformers:LlamaForCausalLM
    assert loaded.architecture.ref == "transformers:LlamaForCausalLM"


def test_stacked_evaluation_of_a_transformer_prints_no_torch_notes(models, tmp_path: Path) -> None:
    """vmap runs CPU attention one point at a time and torch says so in a UserWarning meant
    for its developers; a barrier on Llama directories raises no such warning."""
    import warnings

    a, b = _pair(models, tmp_path, "llama", torch.float32, False)
    torch.save(IDS, tmp_path / "ids.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = _cli("barrier", a, b, "--data", tmp_path / "ids.pt", "--steps", "5")
    assert code == 0, err
    assert "aligned" in out
    notes = [str(w.message) for w in caught if "performance drop" in str(w.message)]
    assert notes == [], notes[:1]
