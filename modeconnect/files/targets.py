"""Output targets: every path a command writes, checked before any work, written all at once.

A command declares its outputs first (:meth:`Outputs.plan`). The plan refuses, before
anything is loaded or computed:

* a name whose extension does not fit the output (a checkpoint must end in ``.pt``,
  ``.pth``, ``.bin`` or ``.safetensors``; a JSON report in ``.json``);
* a target whose folder does not exist or is not writable;
* a target that is one of the command's inputs (checkpoints, data files, the file a
  model reference names), even with ``--force``;
* two targets on one path (``--out x.pt --merged x.pt``, a ``--json`` inside ``--report``
  named like a report file);
* an existing file without ``--force``, and a directory where a file is expected.

Writing goes through a :class:`Staging`: each output is written to a temporary file
beside its target (``.NAME.incomplete-PID.tmp``), flushed to disk, and only when every
output is complete are they all renamed into place. If anything fails or the process is
interrupted (``KeyboardInterrupt``; the CLI turns SIGTERM and SIGHUP into one), the
temporary files and any folder the staging created are removed, so a failing run leaves
nothing behind. Only a hard kill (SIGKILL) can leave a ``*.incomplete-*.tmp`` file, which
is safe to delete.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modeconnect.errors import ModeconnectError

__all__ = [
    "CHECKPOINT_EXTENSIONS",
    "KINDS",
    "Fill",
    "Outputs",
    "Staging",
    "Target",
    "input_files",
    "staged_write",
]

CHECKPOINT_EXTENSIONS = (".pt", ".pth", ".bin", ".safetensors")
Fill = Callable[[Path], object]
"""Writes one output's content into the (temporary) file it is given."""
KINDS = ("checkpoint", "json", "report")
REPORT_FILES = ("report.html", "curves.png", "layerwise.png")
"""Files a ``report`` target may write into its folder; each is checked like a target."""


@dataclass(frozen=True)
class Target:
    """One output: the option that names it, its path, and what it holds (:data:`KINDS`)."""

    option: str
    path: Path
    kind: str


class Outputs:
    """The checked outputs of one command, by option name (``"--out"``)."""

    def __init__(self, targets: Mapping[str, Target], force: bool) -> None:
        self._targets = dict(targets)
        self.force = force

    @classmethod
    def plan(
        cls,
        targets: Sequence[tuple[str, str | Path | None, str]],
        *,
        inputs: Iterable[str | Path | None],
        force: bool = False,
    ) -> Outputs:
        """Check every ``(option, path, kind)`` with a path; raise on the first problem.

        ``inputs`` are every file the command reads (``None`` entries are skipped).
        """
        chosen = [Target(opt, Path(p), kind) for opt, p, kind in targets if p is not None]
        sources = [Path(p) for p in inputs if p is not None]
        report_dirs = [t.path for t in chosen if t.kind == "report"]
        claimed: dict[Path, str] = {}
        for target in chosen:
            if target.kind == "report" and target.path.exists() and not target.path.is_dir():
                raise ModeconnectError(
                    f"{target.path}: {target.option} must name a folder, not a file; "
                    "choose another path"
                )
            for option, path in _written_paths(target):
                _check_target(option, path, target.kind, sources, report_dirs, force)
                key = _identity(path)
                if key in claimed:
                    raise ModeconnectError(
                        f"{path}: both {claimed[key]} and {option} would write this file; "
                        "give each output its own path"
                    )
                claimed[key] = option
        return cls({t.option: t for t in chosen}, force)

    def __contains__(self, option: object) -> bool:
        return option in self._targets

    def path(self, option: str) -> Path:
        return self._targets[option].path

    @contextlib.contextmanager
    def writing(self) -> Iterator[Staging]:
        """Stage writes; rename them all into place at the end, or remove them all on failure."""
        with Staging() as staging:
            yield staging


def _written_paths(target: Target) -> list[tuple[str, Path]]:
    if target.kind != "report":
        return [(target.option, target.path)]
    return [(target.option, target.path / name) for name in REPORT_FILES]


def _identity(path: Path) -> Path:
    return path.resolve()


def _check_target(
    option: str,
    path: Path,
    kind: str,
    inputs: Sequence[Path],
    report_dirs: Sequence[Path],
    force: bool,
) -> None:
    for source in inputs:
        if _same_file(path, source):
            raise ModeconnectError(
                f"{path}: {option} would overwrite the input {source}; inputs are never "
                "modified, not even with --force; choose another path"
            )
    if path.is_dir():
        raise ModeconnectError(f"{path}: {option} names a directory; pass a file name")
    _check_extension(option, path, kind)
    _check_folder(option, path, report_dirs)
    if path.exists() and not force:
        raise ModeconnectError(f"{path}: already exists ({option}); pass --force to overwrite it")


def _check_extension(option: str, path: Path, kind: str) -> None:
    suffix = path.suffix.lower()
    if kind == "checkpoint" and suffix not in CHECKPOINT_EXTENSIONS:
        raise ModeconnectError(
            f"{path}: {option} needs a checkpoint extension, got {suffix or '(none)'!r}; "
            f"use one of {', '.join(CHECKPOINT_EXTENSIONS)}"
        )
    if kind == "json" and suffix != ".json":
        raise ModeconnectError(
            f"{path}: {option} writes JSON, so its name must end in .json, got "
            f"{suffix or '(none)'!r}; rename the target"
        )


def _check_folder(option: str, path: Path, report_dirs: Sequence[Path]) -> None:
    folder = path.parent
    if any(folder == d or d in folder.parents for d in report_dirs):
        while not folder.exists() and folder != folder.parent:  # a report makes its folders
            folder = folder.parent
    if not folder.is_dir():
        raise ModeconnectError(
            f"{path}: the folder {folder} for {option} does not exist; create it first"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ModeconnectError(
            f"{path}: the folder {folder} for {option} is not writable; choose another path"
        )


def _same_file(target: Path, source: Path) -> bool:
    if target.resolve() == source.resolve():
        return True
    try:
        return target.exists() and source.exists() and os.path.samefile(target, source)
    except OSError:
        return False


def input_files(
    checkpoints: Iterable[str | Path | None],
    *,
    data: Iterable[str | Path | None] = (),
    model: str | None = None,
) -> list[Path]:
    """Every file a command reads, for :meth:`Outputs.plan`: checkpoints, data files (or the
    Python file a ``file.py:callable`` data source names) and the file a model reference names.
    """
    from modeconnect.files.data import is_data_reference
    from modeconnect.files.references import reference_file

    files = [Path(p) for p in checkpoints if p is not None]
    for source in data:
        if source is None:
            continue
        named = reference_file(str(source)) if is_data_reference(source) else Path(source)
        if named is not None:
            files.append(named)
    model_file = reference_file(model)
    return files + ([model_file] if model_file is not None else [])


# --------------------------------------------------------------------------- staging


class Staging:
    """Temporary files renamed into place together (:meth:`commit`) or removed (:meth:`abort`).

    As a context manager: commit on success, abort on any exception, including
    ``KeyboardInterrupt`` and ``SystemExit``.
    """

    def __init__(self) -> None:
        self._files: list[tuple[Path, Path]] = []  # (temporary, final)
        self._folders: list[Path] = []

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()

    def folder(self, path: Path) -> Path:
        """Create ``path`` and any missing parents; the ones created are removed on abort."""
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir()
            self._folders.append(folder)
        return path

    def write(self, path: Path, fill: Fill) -> Path:
        """Have ``fill`` write a new temporary file beside ``path``; staged until :meth:`commit`."""
        tmp = path.parent / f".{path.name}.incomplete-{os.getpid()}.tmp"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # honours umask
            self._files.append((tmp, path))
            fill(tmp)
            _fsync(tmp)
        except OSError as exc:
            raise ModeconnectError(
                f"{path}: cannot write the output ({' '.join(str(exc).split())}); "
                "check the disk space and permissions"
            ) from exc
        return path

    def write_bytes(self, path: Path, data: bytes) -> Path:
        return self.write(path, lambda tmp: tmp.write_bytes(data))

    def write_text(self, path: Path, text: str) -> Path:
        return self.write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def commit(self) -> None:
        """Rename every staged file over its target, in the order written."""
        try:
            for tmp, final in self._files:
                os.replace(tmp, final)
        except BaseException:
            self.abort()
            raise
        self._files, self._folders = [], []

    def abort(self) -> None:
        """Remove every staged file and every folder this staging created (if empty)."""
        for tmp, _ in self._files:
            tmp.unlink(missing_ok=True)
        for folder in reversed(self._folders):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._files, self._folders = [], []


def staged_write(path: Path, fill: Fill) -> Path:
    """Write one file atomically: :meth:`Staging.write`, then rename."""
    with Staging() as staging:
        return staging.write(path, fill)


def _fsync(file: Path) -> None:
    with open(file, "rb+") as handle:
        os.fsync(handle.fileno())
