"""Hostile paths: inputs are never modified, outputs never go through links.

The classes of issue 18 item 1, 4, 5 (an output that becomes a directory) and 8: an
output option naming an input directory itself; links inside a checkpoint directory
that leave it (weights, shards, config, tokenizer files), read, copied into outputs, or
named later as an output with ``--force``; outputs whose targets change while the
command runs; links as output targets. Each refusal is checked by ``assert_refused``
(exit 2, one line, nothing changed, no network).
"""

from __future__ import annotations

import os
from pathlib import Path

import hf_models as hf
import pytest
import torch
from hostile_bench import Bench, assert_refused, snapshot

import modeconnect.io.targets as targets
from modeconnect.errors import ModeconnectError
from modeconnect.io.links import checkpoint_root, refuse_outside_links


@pytest.fixture(scope="module")
def llamas() -> tuple[torch.nn.Module, torch.nn.Module]:
    a = hf.llama()
    return a, hf.permuted_copy(a)


def _dirs(bench: Bench, llamas, sharded: bool = False) -> tuple[Path, Path]:
    a = hf.save(llamas[0], bench.root / "A", sharded=sharded)
    b = hf.save(llamas[1], bench.root / "B", sharded=sharded)
    return a, b


def _move_out_and_link(directory: Path, name: str, outside: Path) -> Path:
    """Move ``directory/name`` to ``outside`` and leave a link to it in its place."""
    outside.parent.mkdir(parents=True, exist_ok=True)
    os.replace(directory / name, outside)
    (directory / name).symlink_to(outside)
    return outside


# --------------------------------------------------------------------------- outputs on inputs


@pytest.mark.parametrize("command", ["barrier", "curve"])
def test_a_report_folder_may_not_be_an_input_directory(bench: Bench, llamas, command) -> None:
    a, b = _dirs(bench, llamas)
    ids = bench.root / "ids.pt"
    torch.save(torch.randint(0, hf.VOCAB, (4, 16), generator=torch.Generator().manual_seed(0)), ids)
    for target in (a, b):
        extra = ["--train", ids] if command == "curve" else []
        run = bench.cli(command, a, b, "--data", ids, *extra, "--report", target, "--force")
        assert_refused(bench, run, "would write into the input directory")


# --------------------------------------------------------------------------- links out of inputs


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_file_linked_out_of_a_checkpoint_directory_is_refused(bench: Bench, llamas, name):
    a, b = _dirs(bench, llamas)
    outside = _move_out_and_link(b, name, bench.root / "elsewhere" / name)
    # Read through the link, then overwritten when named as an output with --force:
    option = "--json" if name.endswith(".json") else "--out"
    for extra in ([], [option, outside, "--force"]):
        assert_refused(bench, bench.cli("align", a, b, *extra), "symbolic link", name)


def test_a_shard_linked_out_of_the_directory_is_never_read(bench: Bench, llamas) -> None:
    a, b = _dirs(bench, llamas, sharded=True)
    shard = sorted(p.name for p in b.glob("model-*.safetensors"))[0]
    _move_out_and_link(b, shard, bench.root / "private" / shard)
    assert_refused(bench, bench.cli("spec", b), "symbolic link", shard)
    assert_refused(bench, bench.subprocess("align", a, b), "symbolic link", shard)


@pytest.mark.parametrize("name", ["merges.txt", "chat_template.jinja", "tokenizer.json"])
def test_a_tokenizer_file_linked_elsewhere_is_never_copied_into_an_output(
    bench: Bench, llamas, name
) -> None:
    a, b = _dirs(bench, llamas)
    secret = bench.root / "home" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("private key")
    (a / name).symlink_to(secret)
    run = bench.cli("merge", a, b, "--out", bench.root / "merged")
    assert_refused(bench, run, "symbolic link", name)
    assert not (bench.root / "merged").exists()


def test_a_dangling_link_is_refused(bench: Bench, llamas) -> None:
    a, b = _dirs(bench, llamas)
    (b / "tokenizer.json").symlink_to(bench.root / "gone.json")
    assert_refused(bench, bench.cli("spec", b), "symbolic link", "leads nowhere")


def test_links_that_stay_inside_the_directory_are_followed(bench: Bench, llamas) -> None:
    a, b = _dirs(bench, llamas)
    os.replace(b / "model.safetensors", b / "weights.bin.safetensors")
    (b / "model.safetensors").symlink_to("weights.bin.safetensors")
    before = snapshot(bench.root)
    code, err = bench.cli("align", a, b, "--out", bench.root / "C")()
    assert code == 0, err
    assert not (bench.root / "C" / "model.safetensors").is_symlink()
    del before  # the output was added; the inputs are checked below
    assert (b / "model.safetensors").is_symlink()


def test_a_hub_cache_snapshot_reads_its_blobs(bench: Bench, llamas, tmp_path: Path) -> None:
    """The Hugging Face cache links snapshot files to ``../../blobs``: that stays allowed."""
    a, _ = _dirs(bench, llamas)
    repo = bench.root / "hub" / "models--org--tiny"
    snap = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, file in enumerate(sorted(p for p in a.iterdir() if p.is_file())):
        blob = repo / "blobs" / f"{i:040x}"
        blob.write_bytes(file.read_bytes())
        (snap / file.name).symlink_to(Path("../../blobs") / blob.name)
    assert checkpoint_root(snap) == repo.resolve()
    refuse_outside_links(snap)  # no error
    # ...but the cache repository is an input as a whole: nothing may be written into it.
    run = bench.cli("align", a, snap, "--out", repo / "snapshots" / "merged")
    assert_refused(bench, run, "would write into the input directory")
    code, err = bench.cli("align", a, snap, "--out", bench.root / "C")()
    assert code == 0, err


# --------------------------------------------------------------------------- outputs and links


def test_an_output_link_is_replaced_never_written_through(bench: Bench) -> None:
    other = bench.root / "other.json"
    other.write_text("keep me")
    link = bench.root / "r.json"
    link.symlink_to(other)
    code, err = bench.cli("align", bench.a, bench.b, "--data", bench.data, "--steps", "3",
                          "--json", link, "--force")()  # fmt: skip
    assert code == 0, err
    assert other.read_text() == "keep me"
    assert not link.is_symlink() and link.read_text().startswith("{")


def test_force_over_a_linked_checkpoint_folder_leaves_nothing_aside(bench: Bench, llamas) -> None:
    a, b = _dirs(bench, llamas)
    real = bench.root / "real_out"
    code, err = bench.cli("align", a, b, "--out", real)()
    assert code == 0, err
    before = snapshot(real)
    link = bench.root / "linked_out"
    link.symlink_to(real, target_is_directory=True)
    code, err = bench.cli("align", a, b, "--out", link, "--force")()
    assert code == 0, err
    assert not link.is_symlink() and (link / "config.json").is_file()
    assert snapshot(real) == before, "the link's target was written through"
    assert sorted(p.name for p in bench.root.iterdir() if p.name.startswith(".")) == []


# --------------------------------------------------------------------------- targets that change


def _hook_before_commit(monkeypatch: pytest.MonkeyPatch, action) -> None:
    """Run ``action`` once, just before the staged outputs are renamed into place."""
    original = targets.Staging.commit

    def commit(self: targets.Staging) -> None:
        action()
        original(self)

    monkeypatch.setattr(targets.Staging, "commit", commit)


def test_an_output_that_becomes_a_directory_leaves_nothing_behind(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, report = bench.root / "o.pt", bench.root / "r.json"
    _hook_before_commit(monkeypatch, lambda: report.mkdir(exist_ok=True))
    run = bench.cli("align", bench.a, bench.b, "--data", bench.data, "--steps", "3",
                    "--out", out, "--json", report)  # fmt: skip
    before = snapshot(bench.root)
    code, err = run()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "became a directory" in err and str(report) in err
    after = snapshot(bench.root)
    assert after == {**before, "r.json": "<dir>"}, "an output was left behind"


def test_a_replaced_output_comes_back_when_a_later_one_fails(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, report = bench.root / "o.pt", bench.root / "r.json"
    out.write_bytes(b"the old output")
    _hook_before_commit(monkeypatch, lambda: report.mkdir(exist_ok=True))
    code, err = bench.cli("align", bench.a, bench.b, "--data", bench.data, "--steps", "3",
                          "--out", out, "--json", report, "--force")()  # fmt: skip
    assert code == 2, err
    assert out.read_bytes() == b"the old output"
    assert not [p for p in bench.root.iterdir() if p.name.startswith(".")]


def test_an_output_that_appears_without_force_is_not_replaced(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = bench.root / "o.pt"
    _hook_before_commit(monkeypatch, lambda: out.write_bytes(b"someone else's"))
    code, err = bench.cli("align", bench.a, bench.b, "--data", bench.data, "--steps", "3",
                          "--out", out)()  # fmt: skip
    assert code == 2 and "appeared while the command ran" in err, err
    assert out.read_bytes() == b"someone else's"


def test_commit_is_all_or_nothing(tmp_path: Path) -> None:
    """The staging alone: the second rename fails, the first output is taken back."""
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text("old")
    staging = targets.Staging()
    staging.write_text(first, "new")
    staging.write_text(second, "new")
    second.mkdir()
    with pytest.raises(ModeconnectError, match="became a directory"):
        staging.commit()
    assert first.read_text() == "old" and second.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]
