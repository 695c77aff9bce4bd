"""Symbolic links in checkpoint directories: which are followed, and what a directory owns.

A checkpoint directory comes from a stranger, and a link inside it can point anywhere:
at a private file that a merge would then copy into its output and publish, or at a
file that an output option later names, so that ``--force`` would overwrite what was
read as an input. The policy (SECURITY.md):

* a link inside a checkpoint directory is followed only when its target lies inside the
  directory's *root*: the directory itself, or, for a Hugging Face hub cache snapshot
  (``models--ORG--NAME/snapshots/REVISION``, whose files are links to
  ``../../blobs/HASH``), the repository folder ``models--ORG--NAME``;
* every other link is refused, as is a link that resolves nowhere, before anything is
  read; the check covers every entry of the directory, so that tokenizer files read by
  ``transformers`` and files copied into outputs are covered too;
* the root is an input as a whole: no output may be written inside it.

Outputs never write through links: each is written to a new temporary file and renamed
over its target, which replaces a link with a regular file and leaves the link's
target as it was (:mod:`modeconnect.io.targets`).
"""

from __future__ import annotations

import os
from pathlib import Path

from modeconnect.errors import UntrustedReference

__all__ = ["checkpoint_root", "refuse_outside_links"]

_HUB_REPO_PREFIXES = ("models--", "datasets--", "spaces--")


def checkpoint_root(directory: str | Path) -> Path:
    """The folder a checkpoint directory's links may point into (resolved; module docstring)."""
    resolved = Path(directory).resolve()
    snapshots, repo = resolved.parent, resolved.parent.parent
    if snapshots.name == "snapshots" and repo.name.startswith(_HUB_REPO_PREFIXES):
        return repo
    return resolved


def refuse_outside_links(directory: str | Path) -> None:
    """Raise on the first link in ``directory`` whose target leaves :func:`checkpoint_root`.

    Every entry is checked (not only the files modeconnect reads itself), since
    ``transformers`` reads tokenizer files of its own choosing and outputs copy others.
    """
    directory = Path(directory)
    root = checkpoint_root(directory)
    with os.scandir(directory) as entries:
        links = sorted(Path(e.path) for e in entries if e.is_symlink())
    for link in links:
        target = link.resolve()
        if not _inside(target, root) or not target.exists():
            where = "outside the checkpoint directory" if target.exists() else "nowhere"
            raise UntrustedReference(
                f"{link}: is a symbolic link to {os.readlink(link)!r}, which leads {where}; "
                "links in a checkpoint directory may only point inside it, so that reading a "
                "checkpoint can never read, copy or later overwrite another file; copy the "
                "file into the directory instead of linking it"
            )


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
