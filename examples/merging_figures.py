"""The figures of ``docs/science/merging.md``, drawn from the stored runs (no rerun).

* ``merging_class_split.png``: joint test accuracy of each merge of the class-split pair
  (digits and MNIST scale), mean ± standard deviation over the seeds;
* ``merging_width_fusion.png``: the same for the width-fusion study;
* ``merging_n_way.png``: the same for the four-model merges;
* ``merging_lm_width.png``: held-out perplexity of the tiny Llamas of two widths, their
  ensemble and their fusions, mean ± standard deviation over the seed triples, and each
  triple's value.

(``merging_compression.png`` is drawn by ``examples/science_merging.py`` itself.)

Run from the repository root: ``python examples/merging_figures.py`` (``--out DIR``:
where the PNGs go; ``docs/science`` by default).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STUDIES = (
    ("merging_class_split.png", "Class split: joint test accuracy",
     ("results/merging_class_split.json", "digits"),
     ("results/merging_mnist_class_split.json", "MNIST scale")),
    ("merging_width_fusion.png", "Width fusion: test accuracy",
     ("results/merging_width_fusion.json", "digits"),
     ("results/merging_mnist_scale.json", "MNIST scale")),
    ("merging_n_way.png", "Four models: test accuracy",
     ("results/merging_n_way.json", "digits"),
     ("results/merging_mnist_n_way.json", "MNIST scale")),
)  # fmt: skip
"""Each accuracy figure: its file, its title, and one panel per stored run."""
LM_RUN = "results/merging_lm_width.json"


def numbers(root: Path, path: str) -> dict[str, Any] | None:
    """The ``numbers`` of a stored run (:func:`modeconnect.provenance.write_result`), or
    ``None`` where it is not stored."""
    file = root / path
    if not file.is_file():
        return None
    record = json.loads(file.read_text(encoding="utf-8"))
    return dict(record.get("numbers", record))


def accuracy_bars(found: dict[str, Any]) -> list[tuple[str, float, float]]:
    """``(row, mean, standard deviation over the seeds)`` of a run's ``accuracy`` table,
    best mean first."""
    bars = [(name, a["mean"], a["std"]) for name, a in found["accuracy"].items()]
    return sorted(bars, key=lambda bar: -bar[1])


def _accuracy_figure(panels: list[tuple[str, dict[str, Any]]], title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, (label, found) in zip(axes[0], panels, strict=True):
        bars = accuracy_bars(found)
        names = [b[0] for b in bars][::-1]
        means = [b[1] for b in bars][::-1]
        spread = [b[2] for b in bars][::-1]
        ax.barh(names, means, xerr=spread, color="#4c72b0", capsize=3)
        ax.set_xlim(0, 1)
        ax.set_xlabel("test accuracy (mean ± sd over the seeds)")
        ax.set_title(label)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def lm_bars(found: dict[str, Any]) -> list[tuple[str, float, float, list[float]]]:
    """Each row of the LM width-fusion run, lowest mean perplexity first: its name, mean,
    sample standard deviation over the seed triples, and each triple's perplexity."""
    runs = found.get("runs", [])
    rows = [
        (name, r["perplexity"], r.get("perplexity_std", 0.0),
         [x["perplexity"] for x in runs if x["row"] == name])
        for name, r in found["rows"].items()
    ]  # fmt: skip
    return sorted(rows, key=lambda row: row[1])


def _lm_figure(found: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    bars = lm_bars(found)[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    names = [name for name, *_ in bars]
    ax.barh(names, [m for _, m, _, _ in bars], xerr=[sd for _, _, sd, _ in bars],
            color="#dd8452", capsize=3)  # fmt: skip
    for y, (_, _, _, each) in enumerate(bars):
        ax.plot(each, [y] * len(each), "k.", markersize=4)
    ax.set_xlabel("held-out perplexity (lower is better); mean ± sd, dots: each seed triple")
    ax.set_title("Tiny Llamas of two widths: parents, ensemble, fusions")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None, root: Path = ROOT) -> list[Path]:
    """Draw every figure whose runs are stored; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=root / "docs" / "science")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, title, *runs in STUDIES:
        panels = [(label, found) for path, label in runs if (found := numbers(root, path))]
        if panels:
            _accuracy_figure(panels, title, out / name)
            written.append(out / name)
    lm = numbers(root, LM_RUN)
    if lm is not None:
        _lm_figure(lm, out / "merging_lm_width.png")
        written.append(out / "merging_lm_width.png")
    return written


if __name__ == "__main__":
    for path in main():
        print(f"wrote {path}")
