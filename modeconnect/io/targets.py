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

When the command reads Hugging Face checkpoint directories (``folders=True``), a
checkpoint target without a checkpoint extension is a *folder target*: a
``save_pretrained`` directory. It must not be an input, hold an input, or lie inside
an input directory; an existing one is replaced only with ``--force`` and only if it is
itself a checkpoint directory (it has ``config.json``), so a mistyped ``--out ~``
cannot empty a home folder.

Writing goes through a :class:`Staging`: each output is written to a temporary file
(a temporary folder for a folder target) beside its target
(``.NAME.incomplete-PID.tmp``), flushed to disk, and only when every output is
complete are they all renamed into place (a replaced folder is moved aside first and
removed last). If anything fails or the process is
interrupted (``KeyboardInterrupt``; the CLI turns SIGTERM and SIGHUP into one), the
temporary files and any folder the staging created are removed, so a failing run leaves
nothing behind. Only a hard kill (SIGKILL) can leave a ``*.incomplete-*.tmp`` file, which
is safe to delete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modeconnect.errors import ModeconnectError, OutputConflict
from modeconnect.io.links import checkpoint_root

__all__ = [
    "CHECKPOINT_EXTENSIONS",
    "KINDS",
    "Fill",
    "Outputs",
    "Staging",
    "Target",
    "staged_write",
]

CHECKPOINT_EXTENSIONS = (".pt", ".pth", ".bin", ".safetensors")
Fill = Callable[[Path], object]
"""Writes one output's content into the (temporary) file it is given."""
KINDS = ("checkpoint", "json", "report")
REPORT_FILES = ("report.html", "curves.png", "layerwise.png")
"""Files a ``report`` target may write into its folder; each is checked like a target."""


FOLDER_MARKER = "config.json"
"""A folder target that exists is replaced (with ``--force``) only if it holds this file."""


@dataclass(frozen=True)
class Target:
    """One output: the option that names it, its path, and what it holds (:data:`KINDS`).

    ``folder``: a checkpoint written as a ``save_pretrained`` directory.
    """

    option: str
    path: Path
    kind: str
    folder: bool = False


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
        folders: bool = False,
    ) -> Outputs:
        """Check every ``(option, path, kind)`` with a path; raise on the first problem.

        ``inputs`` are every file (or checkpoint directory) the command reads (``None``
        entries are skipped). ``folders``: a checkpoint target without a checkpoint
        extension is a ``save_pretrained`` directory (module docstring).
        """
        chosen = [
            Target(opt, Path(p), kind, folders and _is_folder_name(Path(p), kind))
            for opt, p, kind in targets
            if p is not None
        ]
        sources = [Path(p) for p in inputs if p is not None]
        report_dirs = [t.path for t in chosen if t.kind == "report"]
        claimed: dict[Path, str] = {}
        _check_nesting(chosen, sources)
        for target in chosen:
            if target.folder:
                _check_folder_target(target, sources, force)
                _claim(claimed, target.option, target.path)
                continue
            if target.kind == "report" and target.path.exists() and not target.path.is_dir():
                raise OutputConflict(
                    f"{target.path}: {target.option} must name a folder, not a file; "
                    "choose another path"
                )
            for option, path in _written_paths(target):
                _check_target(option, path, target.kind, sources, report_dirs, force)
                _claim(claimed, option, path)
        return cls({t.option: t for t in chosen}, force)

    def __contains__(self, option: object) -> bool:
        return option in self._targets

    def path(self, option: str) -> Path:
        return self._targets[option].path

    def is_folder(self, option: str) -> bool:
        """Whether ``option`` writes a ``save_pretrained`` directory."""
        return option in self._targets and self._targets[option].folder

    def is_folder_path(self, path: Path) -> bool:
        """Whether ``path`` is a folder target of this plan."""
        return any(t.folder and t.path == Path(path) for t in self._targets.values())

    @contextlib.contextmanager
    def writing(self) -> Iterator[Staging]:
        """Stage writes; rename them all into place at the end, or remove them all on failure."""
        folders = frozenset(t.path for t in self._targets.values() if t.folder)
        with Staging(folders, force=self.force) as staging:
            yield staging


def _claim(claimed: dict[Path, str], option: str, path: Path) -> None:
    key = _identity(path)
    if key in claimed:
        raise OutputConflict(
            f"{path}: both {claimed[key]} and {option} would write this file; "
            "give each output its own path"
        )
    claimed[key] = option


def _is_folder_name(path: Path, kind: str) -> bool:
    return kind == "checkpoint" and path.suffix.lower() not in CHECKPOINT_EXTENSIONS


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both resolved)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _check_nesting(targets: Sequence[Target], inputs: Sequence[Path]) -> None:
    """No target is or lies inside an input directory (its :func:`checkpoint_root`), and
    none inside a folder target. A folder target that *is* an input is left to
    :func:`_check_folder_target`, which says so."""
    for target in targets:
        for source in inputs:
            if not source.is_dir() or (target.folder and _same_file(target.path, source)):
                continue
            if _inside(target.path, source) or _inside(target.path, checkpoint_root(source)):
                raise OutputConflict(
                    f"{target.path}: {target.option} would write into the input directory "
                    f"{source}; inputs are never modified, not even with --force; choose a "
                    "path outside it"
                )
        for other in targets:
            if other.folder and other is not target and _inside(target.path, other.path):
                raise OutputConflict(
                    f"{target.path}: {target.option} lies inside {other.path}, which "
                    f"{other.option} writes as a whole; give each output its own path"
                )


def _check_folder_target(target: Target, inputs: Sequence[Path], force: bool) -> None:
    option, path = target.option, target.path
    for source in inputs:
        if _inside(source, path):
            what = "is the input" if _same_file(path, source) else "holds the input"
            raise OutputConflict(
                f"{path}: {option} {what} {source}; inputs are never modified, not even "
                "with --force; choose another folder"
            )
    _check_folder(option, path, ())
    if path.exists() and not path.is_dir():
        raise OutputConflict(
            f"{path}: {option} names an existing file, but without a checkpoint extension it "
            "writes a Hugging Face directory; choose a new folder name, or a name ending in "
            f"{', '.join(CHECKPOINT_EXTENSIONS)}"
        )
    if path.exists() and not force:
        raise OutputConflict(f"{path}: already exists ({option}); pass --force to replace it")
    if path.exists() and not (path / FOLDER_MARKER).is_file():
        raise OutputConflict(
            f"{path}: {option} names an existing folder that is not a checkpoint directory "
            f"(it has no {FOLDER_MARKER}), so it is not replaced even with --force; choose a "
            "new folder name"
        )


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
            raise OutputConflict(
                f"{path}: {option} would overwrite the input {source}; inputs are never "
                "modified, not even with --force; choose another path"
            )
    if path.is_dir():
        raise OutputConflict(f"{path}: {option} names a directory; pass a file name")
    _check_extension(option, path, kind)
    _check_folder(option, path, report_dirs)
    if path.exists() and not force:
        raise OutputConflict(f"{path}: already exists ({option}); pass --force to overwrite it")


def _check_extension(option: str, path: Path, kind: str) -> None:
    suffix = path.suffix.lower()
    if kind == "checkpoint" and suffix not in CHECKPOINT_EXTENSIONS:
        raise OutputConflict(
            f"{path}: {option} needs a checkpoint extension, got {suffix or '(none)'!r}; "
            f"use one of {', '.join(CHECKPOINT_EXTENSIONS)}"
        )
    if kind == "json" and suffix != ".json":
        raise OutputConflict(
            f"{path}: {option} writes JSON, so its name must end in .json, got "
            f"{suffix or '(none)'!r}; rename the target"
        )


def _check_folder(option: str, path: Path, report_dirs: Sequence[Path]) -> None:
    folder = path.parent
    if any(folder == d or d in folder.parents for d in report_dirs):
        while not folder.exists() and folder != folder.parent:  # a report makes its folders
            folder = folder.parent
    if not folder.is_dir():
        raise OutputConflict(
            f"{path}: the folder {folder} for {option} does not exist; create it first"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputConflict(
            f"{path}: the folder {folder} for {option} is not writable; choose another path"
        )


def _same_file(target: Path, source: Path) -> bool:
    if target.resolve() == source.resolve():
        return True
    try:
        return target.exists() and source.exists() and os.path.samefile(target, source)
    except OSError:
        return False


# --------------------------------------------------------------------------- staging


class Staging:
    """Temporary files renamed into place together (:meth:`commit`) or removed (:meth:`abort`).

    As a context manager: commit on success, abort on any exception, including
    ``KeyboardInterrupt`` and ``SystemExit``.
    """

    def __init__(self, folders: frozenset[Path] = frozenset(), *, force: bool = True) -> None:
        self._files: list[tuple[Path, Path]] = []  # (temporary, final)
        self._folders: list[Path] = []
        self._folder_targets = folders
        self._force = force

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
        """Have ``fill`` write a new temporary file beside ``path``; staged until :meth:`commit`.

        For a folder target (given to the constructor) ``fill`` gets a new temporary
        folder to write its files into.
        """
        tmp = path.parent / f".{path.name}.incomplete-{os.getpid()}.tmp"
        try:
            if path in self._folder_targets:
                tmp.mkdir()  # fails if it exists; honours umask
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            self._files.append((tmp, path))
            fill(tmp)
            for file in sorted(tmp.iterdir()) if tmp.is_dir() else [tmp]:
                _fsync(file)
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
        """Rename every staged output over its target: all of them, or none.

        Each existing target (a file, a link, or with ``--force`` a checkpoint folder) is
        renamed aside first and removed only once every output is in place. If anything
        fails on the way (a target became a directory while the command ran, the disk
        refused a rename, an interruption), the outputs already in place are removed, the
        targets put back and the staged files removed: the command fails with nothing
        changed. A target is replaced, never written through: a link is replaced by the
        output and its own target is left as it was.
        """
        placed: list[tuple[Path, Path | None]] = []  # (final, aside): final holds our output
        try:
            for tmp, final in self._files:
                self._check_unchanged(tmp, final)
                aside = None
                if final.is_symlink() or final.exists():
                    aside = final.parent / f".{final.name}.replaced-{os.getpid()}.tmp"
                    os.replace(final, aside)
                try:
                    os.replace(tmp, final)
                except BaseException:
                    if aside is not None:
                        os.replace(aside, final)
                    raise
                placed.append((final, aside))
        except BaseException as exc:
            for final, aside in reversed(placed):
                _remove(final)
                if aside is not None:
                    os.replace(aside, final)
            self.abort()
            if isinstance(exc, OSError):
                raise ModeconnectError(
                    f"{final}: cannot put the output in place ({' '.join(str(exc).split())}); "
                    "nothing was written; check the folder and run again"
                ) from exc
            raise
        for _, aside in placed:
            if aside is not None:
                _remove(aside)
        self._files, self._folders = [], []

    def _check_unchanged(self, tmp: Path, final: Path) -> None:
        """The target is still what the plan checked: no folder where a file goes, no new file
        without ``--force``, and a replaced folder still a checkpoint directory."""
        if final.is_dir() and not final.is_symlink() and not tmp.is_dir():
            raise OutputConflict(
                f"{final}: became a directory while the command ran; nothing was written; "
                "choose another path, or remove the directory and run again"
            )
        exists = final.is_symlink() or final.exists()
        if exists and not self._force:
            raise OutputConflict(
                f"{final}: appeared while the command ran; nothing was written; pass --force to "
                "replace it"
            )
        if not exists or final.is_symlink():  # a link is replaced, whatever it points to
            return
        if tmp.is_dir() and not (final.is_dir() and (final / FOLDER_MARKER).is_file()):
            raise OutputConflict(
                f"{final}: changed while the command ran and is no longer a checkpoint "
                f"directory (with {FOLDER_MARKER}); nothing was written; choose a new folder"
            )

    def abort(self) -> None:
        """Remove every staged file and every folder this staging created (if empty)."""
        for tmp, _ in self._files:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        for folder in reversed(self._folders):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._files, self._folders = [], []


def staged_write(path: Path, fill: Fill) -> Path:
    """Write one file atomically: :meth:`Staging.write`, then rename."""
    with Staging() as staging:
        return staging.write(path, fill)


def _remove(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a folder."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(file: Path) -> None:
    with open(file, "rb+") as handle:
        os.fsync(handle.fileno())
