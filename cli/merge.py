"""``modeconnect merge A B [C ...]``: align N checkpoints into one basis and average them."""

from __future__ import annotations

from typing import Any

import click

from modeconnect.fusion.declared import FUSION_NAMES
from modeconnect_cli import options as o
from modeconnect_cli.commands import finish, library, main, parsed
from modeconnect_cli.format import format_merge


@o.command(main)
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@o.ARCHITECTURE
@o.output(
    "--out",
    "The merged checkpoint (.pt, .safetensors; for checkpoint directories, a directory).",
    required=True,
)
@o.weights_option()
@o.method(allow_none=True, extra=FUSION_NAMES)
@o.METHOD_OPTIONS
@o.SYMMETRY
@o.FUSION_OPTIONS
@o.WIDTH
@click.option("--reference", type=click.Path(),
              help="Align every model to this checkpoint instead of MergeMany.")  # fmt: skip
@click.option("--max-rounds", type=click.IntRange(min=1), default=20, show_default=True,
              help="MergeMany rounds at most.")  # fmt: skip
@o.data()
@o.TRAIN
@o.bn(("none", "reset"))
@o.SEED_OPTION
@o.BATCH_SIZE
@o.LARGE_MODELS
@o.OUTPUTS
def merge(checkpoints: tuple[str, ...], verbose: bool, quiet: bool, **opts: Any) -> None:
    """Align checkpoints A B [C ...] into one basis and write their weighted average.

    Checkpoints are files or Hugging Face directories (save_pretrained).
    """
    if opts["method"] not in FUSION_NAMES:
        o.check_method_flags([opts["method"]], opts)
    fusion = opts["method"] in FUSION_NAMES
    merge_files, _ = (
        library("modeconnect.commands.fuse", "fuse_files")
        if fusion
        else library("modeconnect.commands.merge", "merge_files")
    )
    from modeconnect.progress import ProgressBar

    with ProgressBar(quiet=quiet) as bar:
        options = parsed("MergeOptions", progress=bar, **opts)
        report = merge_files(checkpoints, options)
    text = format_fusion(report) if fusion else format_merge(report)
    finish(text, report.timings, verbose)


def format_fusion(report: Any) -> str:
    """A fusion's report (``merge --method zip|otfusion|universe``) as a few lines."""
    res = report.result
    lines = [
        f"model      {report.model_ref} {report.model_kwargs}",
        f"merge      {len(report.sources)} models, method {res.method}, widths {res.widths}, "
        f"{res.seconds:.2f} s",
        "guard      not applicable: the fused model is the evaluated object",
    ]
    if report.inputs is not None:
        lines += ["", f"{'':>10} {'weight':>7} {'loss':>8} {'acc':>8}  source"]
        for path, w, m in zip(report.sources, res.weights, report.inputs, strict=True):
            lines.append(f"{'input':>10} {w:7.3f} {m.loss:8.4f} {m.accuracy:8.2%}  {path}")
        lines.append(
            f"{'merged':>10} {'':7} {report.merged.loss:8.4f} {report.merged.accuracy:8.2%}"
        )
    lines += [f"wrote      {name}: {path}" for name, path in report.written.items()]
    return "\n".join(lines)
