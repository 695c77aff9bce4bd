"""``modeconnect sweep CONFIG``: pairs × methods × seeds, one table row each, resumable."""

from __future__ import annotations

from typing import Any

import click

from modeconnect_cli import options as o
from modeconnect_cli.commands import finish, main, run_study


@o.command(main)
@click.argument("config", type=click.Path())
@o.ARCHITECTURE
@o.data(required=True)
@o.TRAIN
@o.BATCH_SIZE
@o.RAY
@o.output("--csv", "Also write the table as CSV (.csv).", dest="csv_path")
@o.OUTPUTS
def sweep(config: str, verbose: bool, quiet: bool, **opts: Any) -> None:
    """Run `compare` on every pair x method x seed that CONFIG lists; write one table.

    CONFIG is JSON (or YAML with PyYAML): {"pairs": [["a.pt", "b.pt"], ...],
    "methods": ["weight", ...], "seeds": [0, ...], "steps": 25, "method_options":
    {"ot": {"reg": 0.05}}}; paths are relative to its folder.
    The --json table is rewritten as each row finishes; run again, the rows already in
    it are skipped (--force: a new table). --ray runs the rows on Ray.
    """
    report = run_study(
        "modeconnect.commands.sweep", "sweep_files", "SweepOptions", config, quiet=quiet,
        **opts,
    )  # fmt: skip
    lines = [f"rows       {len(report.rows)} ({report.new} new, {report.resumed} from the table)"]
    lines += [f"wrote      {what}: {path}" for what, path in report.written.items()]
    finish("\n".join(lines), report.timings, verbose)
