"""``sweep`` on files: pairs × methods × seeds from a config file, one table row each.

A config (JSON, or YAML when PyYAML is installed) lists what to run::

    {"pairs": [["a.pt", "b.pt"], {"a": "a.pt", "b": "c.pt"}],
     "methods": ["weight", "ot"], "seeds": [0, 1], "steps": 25,
     "method_options": {"ot": {"reg": 0.05}}}

Each row is ``modeconnect compare`` on one pair with one method and one seed
(:func:`~modeconnect.commands.compare.compare_files`): the alignment's time and
objective, the naive and aligned barriers. Rows are independent, so with a cluster
(``ray``) they run on Ray, each opening its checkpoints on its worker from their paths.

The table (``--json``, and ``--csv`` if asked) is rewritten as each row finishes, so an
interrupted sweep keeps its rows; run again, it skips every row already in the table
and computes the rest (``force``: start a new table). A table written under other
settings (steps, method options, model, data) is refused rather than mixed.

The config is untrusted (SECURITY.md): every key and value is checked, paths are
relative to the config's folder, methods come from the registry and their options
from what the registry declares (values checked against each parameter's type,
choices and range). The model, data and ``permute_output`` come from the command's own
options, never from the file.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modeconnect.commands.compare import compare_files
from modeconnect.commands.options import CompareOptions, Run, SweepOptions
from modeconnect.distributed import cluster_from, map_chunks
from modeconnect.errors import ModeconnectError
from modeconnect.io.jsonfile import check_plain_value, read_json_file
from modeconnect.io.offline import offline
from modeconnect.io.targets import Outputs, staged_write
from modeconnect.matching import METHODS, get_method
from modeconnect.matching.params import Param

__all__ = ["SweepPlan", "SweepReport", "read_sweep_config", "sweep_files"]

KEYS = ("pairs", "methods", "seeds", "steps", "method_options")
MAX_ROWS = 100_000
SAVE_EVERY = 1.0
"""Seconds between rewrites of the table while rows finish (and once at the end)."""
MAX_STEPS = 10_001
MAX_SEED = 2**63 - 1
COLUMNS = (
    "a", "b", "method", "seed", "seconds", "objective", "iterations",
    "naive_loss", "naive_error", "aligned_loss", "aligned_error", "definition",
)  # fmt: skip
_FIX = "fix the sweep config (see modeconnect sweep --help)"


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep config asks for (checked): every row is ``(a, b, method, seed)``."""

    pairs: tuple[tuple[Path, Path], ...]
    methods: tuple[str, ...] = ("weight",)
    seeds: tuple[int, ...] = (0,)
    steps: int = 25
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str, str, int]]:
        """Every row, pairs outermost, then methods, then seeds."""
        return [
            (str(a), str(b), m, s) for a, b in self.pairs for m in self.methods for s in self.seeds
        ]

    def settings(self) -> dict[str, Any]:
        """What every row shares: a table written under other settings is not resumed."""
        return {
            "steps": self.steps,
            "method_options": {m: dict(o) for m, o in sorted(self.method_options.items())},
        }


@dataclass(frozen=True)
class SweepReport:
    """What ``modeconnect sweep`` computed and wrote: every row of the table, in plan order,
    with how many were computed now (``new``) and found in the table (``resumed``)."""

    rows: tuple[Mapping[str, Any], ...]
    new: int
    resumed: int
    written: Mapping[str, Path] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows], "new": self.new, "resumed": self.resumed}


# --------------------------------------------------------------------------- the config


def read_sweep_config(path: str | Path) -> SweepPlan:
    """The plan in the config file ``path`` (module docstring), every field checked; any
    problem is one line naming the file and the key."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        raw = _read_yaml(path)
    else:
        raw = read_json_file(path, _FIX)
    where = str(path)
    if not isinstance(raw, dict):
        raise ModeconnectError(f"{where}: a sweep config is a JSON object with keys "
                               f"{', '.join(KEYS)}; {_FIX}")  # fmt: skip
    unknown = sorted(str(k) for k in raw if k not in KEYS)
    if unknown:
        raise ModeconnectError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"a sweep config takes {', '.join(KEYS)}"
        )
    methods = tuple(_names(raw.get("methods", ["weight"]), f"{where}: methods"))
    plan = SweepPlan(
        pairs=tuple(_pairs(raw.get("pairs"), path.parent, f"{where}: pairs")),
        methods=methods,
        seeds=tuple(_seeds(raw.get("seeds", [0]), f"{where}: seeds")),
        steps=_whole(raw.get("steps", 25), 2, MAX_STEPS, f"{where}: steps"),
        method_options=_method_options(raw.get("method_options", {}), methods, where),
    )
    if len(plan.rows()) > MAX_ROWS:
        raise ModeconnectError(
            f"{where}: asks for {len(plan.rows())} rows, more than {MAX_ROWS}; split the sweep"
        )
    return plan


def _read_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise ModeconnectError(
            f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write the config as JSON"
        ) from None
    from modeconnect.io.jsonfile import MAX_BYTES

    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ModeconnectError(f"{path}: cannot be read ({exc.strerror}); {_FIX}") from None
    if len(data) > MAX_BYTES:
        raise ModeconnectError(f"{path}: is more than {MAX_BYTES} bytes; {_FIX}")
    try:
        value = yaml.safe_load(data)  # plain values only: no tags that build objects
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        said = " ".join(str(exc).split())[:200]
        raise ModeconnectError(f"{path}: is not valid YAML ({said}); {_FIX}") from None
    check_plain_value(value, str(path), _FIX)
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ModeconnectError(f"{where} must be a non-empty list, got {_kind(value)}; {_FIX}")
    return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _path(value: Any, folder: Path, where: str) -> Path:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ModeconnectError(f"{where} must be a checkpoint path, got {_kind(value)}; {_FIX}")
    return folder / value


def _pairs(value: Any, folder: Path, where: str) -> list[tuple[Path, Path]]:
    if value is None:
        raise ModeconnectError(f"{where} is missing; list the pairs as [[A, B], ...]")
    out = []
    for i, item in enumerate(_list(value, where)):
        if isinstance(item, dict) and set(item) == {"a", "b"}:
            a, b = item["a"], item["b"]
        elif isinstance(item, list) and len(item) == 2:
            a, b = item
        else:
            raise ModeconnectError(f'{where}[{i}] must be [A, B] or {{"a": A, "b": B}}; {_FIX}')
        out.append((_path(a, folder, f"{where}[{i}][0]"), _path(b, folder, f"{where}[{i}][1]")))
    return out


def _names(value: Any, where: str) -> list[str]:
    names = []
    for i, name in enumerate(_list(value, where)):
        if not isinstance(name, str):
            raise ModeconnectError(f"{where}[{i}] must be a method name, got {_kind(name)}")
        try:
            get_method(name)  # an unknown name: the error lists the valid ones
        except ModeconnectError as exc:
            raise ModeconnectError(f"{where}[{i}]: {exc}") from None
        names.append(name)
    return list(dict.fromkeys(names))


def _whole(value: Any, low: int, high: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ModeconnectError(
            f"{where} must be a whole number from {low} to {high}, got {value!r:.60}; {_FIX}"
        )
    return value


def _seeds(value: Any, where: str) -> list[int]:
    seeds = [_whole(s, 0, MAX_SEED, f"{where}[{i}]") for i, s in enumerate(_list(value, where))]
    return list(dict.fromkeys(seeds))


def _method_options(value: Any, methods: Sequence[str], where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise ModeconnectError(f"{where}: method_options must be an object {{method: {{...}}}}")
    out = {}
    for method, options in value.items():
        at = f"{where}: method_options.{method}"
        if method not in methods:
            raise ModeconnectError(f"{at}: {method!r} is not one of the sweep's methods "
                                   f"({', '.join(methods)}); {_FIX}")  # fmt: skip
        if not isinstance(options, dict):
            raise ModeconnectError(f"{at} must be an object of option: value; {_FIX}")
        info = METHODS.info(method)
        out[method] = {k: _option(info.param(k), v, f"{at}.{k}", info.flags) for k, v in
                       options.items()}  # fmt: skip
    return out


def _option(param: Param | None, value: Any, where: str, flags: Sequence[str]) -> Any:
    """A method option from the file: a declared parameter with a flag, of its type,
    within its choices and range."""
    if param is None or param.flag is None:
        keys = ", ".join(f.lstrip("-").replace("-", "_") for f in flags) or "none"
        raise ModeconnectError(f"{where}: not an option of the method (it takes {keys}); {_FIX}")
    kind = param.type
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if ok and kind is float and not math.isfinite(value):
        ok = False
    if ok and param.choices is not None and value not in param.choices:
        ok = False
    if ok and kind in (int, float):
        low_ok = param.min is None or (value > param.min if param.min_open else
                                       value >= param.min)  # fmt: skip
        ok = low_ok and (param.max is None or value <= param.max)
    if not ok:
        raise ModeconnectError(f"{where} must be {param.domain()}, got {value!r:.60}; {_FIX}")
    return value


# --------------------------------------------------------------------------- the table


def _key(row: Mapping[str, Any]) -> tuple[str, str, str, int]:
    return (str(row["a"]), str(row["b"]), str(row["method"]), int(row["seed"]))


def _read_table(path: Path, header: Mapping[str, Any]) -> dict[tuple[str, str, str, int], Any]:
    """Rows of an earlier run of the same sweep, by key; a file that is not such a table
    is refused (the sweep never overwrites what it did not write)."""
    fix = "pass another --json, or --force to start a new table"
    table = read_json_file(path, fix)
    if not isinstance(table, dict) or not isinstance(table.get("rows"), list):
        raise ModeconnectError(f"{path}: is not a sweep table (no rows); {fix}")
    if table.get("sweep") != header:
        raise ModeconnectError(
            f"{path}: was written by a sweep with other settings (steps, method options, "
            f"model or data); {fix}"
        )
    rows = {}
    for i, row in enumerate(table["rows"]):
        if not isinstance(row, dict) or any(c not in row for c in COLUMNS):
            raise ModeconnectError(f"{path}: rows[{i}] is not a sweep row; {fix}")
        try:
            rows[_key(row)] = row
        except (TypeError, ValueError):
            raise ModeconnectError(f"{path}: rows[{i}] has a bad seed; {fix}") from None
    return rows


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write(path: Path, csv_path: Path | None, header: Any, rows: Sequence[Any]) -> None:
    from modeconnect.io.checkpoints import json_writer

    staged_write(path, json_writer({"sweep": header, "rows": list(rows)}))
    if csv_path is not None:
        text = _csv_text(rows)
        staged_write(csv_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# --------------------------------------------------------------------------- running it


def sweep_files(
    config: str | Path, options: SweepOptions | None = None, **keywords: Any
) -> SweepReport:
    """Run the sweep that ``config`` describes (module docstring) and write its table.

    ``options`` carry the model, data and batch size (as ``compare``'s), the table's
    paths (``json_path``, required; ``csv_path``), ``force`` (a new table) and the
    cluster (``ray``, ``workers``).
    """
    o = SweepOptions.build(options, keywords)
    cluster = cluster_from(o.ray, o.workers)
    plan = read_sweep_config(config)
    clock = o.run.clock()
    json_path = Path(str(o.json_path))
    csv_path = None if o.csv_path is None else Path(o.csv_path)
    if csv_path is not None and csv_path.suffix.lower() != ".csv":
        raise ModeconnectError(f"{csv_path}: --csv writes CSV, so its name must end in .csv")
    header = {**plan.settings(), "model": o.sources.model, "data": str(o.inputs.data),
              "train": None if o.inputs.train is None else str(o.inputs.train),
              "batch_size": o.inputs.batch_size, "permute_output": o.permute_output}  # fmt: skip
    done = {} if o.force or not json_path.exists() else _read_table(json_path, header)
    Outputs.plan(
        [("--json", json_path, "json"), ("--csv", csv_path, "csv")],
        inputs=[Path(config), *(p for pair in plan.pairs for p in pair), o.inputs.data,
                o.inputs.train],
        force=True if done else o.force,
    )  # fmt: skip
    todo = [r for r in plan.rows() if r not in done]
    rows = dict(done)
    base = CompareOptions(sources=o.sources, inputs=o.inputs,
                          run=Run(device=o.run.device, dtype=o.run.dtype),
                          steps=plan.steps, permute_output=o.permute_output)  # fmt: skip

    unsaved = [True]  # (a new table, or a --csv to add, is written even with no new row)

    def save() -> None:
        ordered = [rows[k] for k in plan.rows() if k in rows]
        _write(json_path, csv_path, header, ordered + _others(rows, plan))
        unsaved[0], last[0] = False, time.monotonic()

    last = [time.monotonic()]

    def finished(index: int, row: dict[str, Any]) -> None:
        rows[todo[index]], unsaved[0] = row, True
        if time.monotonic() - last[0] >= SAVE_EVERY:
            save()

    with clock.phase("rows"):
        complete = False
        try:
            map_chunks(
                _run_row, (base, plan.method_options), todo, cluster=cluster,
                progress=o.run.progress, task="sweep", each=finished,
            )  # fmt: skip
            complete = True
        finally:  # an error or an interruption keeps the rows that finished, if any
            if unsaved[0] and (complete or len(rows) > len(done)):
                save()
    written = {"json": json_path, **({"csv": csv_path} if csv_path else {})}
    table = tuple(rows[k] for k in plan.rows())
    return SweepReport(table, len(todo), len(plan.rows()) - len(todo), written, clock.to_dict())


def _others(rows: Mapping[tuple[str, str, str, int], Any], plan: SweepPlan) -> list[Any]:
    """Rows of the table that this config no longer lists: kept, after the plan's."""
    planned = set(plan.rows())
    return [row for key, row in rows.items() if key not in planned]


def _run_row(shared: tuple[CompareOptions, Mapping[str, Any]], row: Any) -> dict[str, Any]:
    """One row, here or on a worker: ``compare`` on the pair with one method and seed."""
    base, method_options = shared
    a, b, method, seed = row
    options = replace(base, methods=[method], seed=seed,
                      method_options=dict(method_options.get(method, {})))  # fmt: skip
    with offline():  # a worker is a fresh process: the Hub stays off there too
        result = compare_files(a, b, options).comparison.rows[0]
    return {
        "a": a, "b": b, "method": method, "seed": seed, "seconds": result.seconds,
        "objective": result.objective, "iterations": result.iterations,
        "naive_loss": result.naive.loss, "naive_error": result.naive.error,
        "aligned_loss": result.aligned.loss, "aligned_error": result.aligned.error,
        "definition": result.naive.definition, "params": dict(result.params),
    }  # fmt: skip
