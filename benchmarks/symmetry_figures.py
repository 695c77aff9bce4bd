"""The figures of ``docs/science/transformers.md``, drawn from the stored runs (no rerun).

* ``transformers_barriers.png``: each family's loss barrier at α = 0.5 as a share of its
  naive barrier, one bar per alignment (``results/transformers_symmetry*.json``: the
  Llamas' runs merged, the latest row winning; ``_gpt2``; ``_vit``);
* ``transformers_vit_curves.png``: the digits ViTs' test loss and error along the whole
  path for the main rows (``results/transformers_symmetry_vit.json``, which stores the
  curves).

Run: ``python benchmarks/symmetry_figures.py`` (``--out DIR``: where the PNGs go;
``docs/science`` by default).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LLAMA_RUNS = ("results/transformers_symmetry.json", "results/transformers_symmetry_qk.json",
              "results/transformers_symmetry_ste.json",
              "results/transformers_symmetry_two_sided.json")  # fmt: skip
"""The Llama pair's runs (the same two models and blocks); a later run's row wins."""
FAMILIES = (
    ("Tiny Llamas", LLAMA_RUNS, "llama"),
    ("Tiny GPT-2s", ("results/transformers_symmetry_gpt2.json",), "gpt2"),
    ("Digits ViTs", ("results/transformers_symmetry_vit.json",), "vit"),
)
"""Each bar group: its title, its stored runs and the family's key in them."""
BARS = (
    "permutation, weight", "orthogonal, weight", "orthogonal, activation", "full, weight",
    "full (orthogonal heads), weight", "full (orthogonal Q·K), weight", "orthogonal, learned",
    "orthogonal, learned two-sided", "orthogonal, learned + STE permutations",
)  # fmt: skip
"""The rows drawn as bars, where a family's run has them."""
SHOWN = {
    "full, weight": "full, least-squares heads, weight",
    "full (orthogonal heads), weight": "full (default: orthogonal heads), weight",
    "full (orthogonal Q·K), weight": "full, l.s. V·O + rotation Q·K, weight",
    "full (orthogonal heads), activation": "full (default), activation",
}
"""How a stored row is labelled in the figures (the ``full`` rows say which heads)."""
CURVES = ("naive", "permutation, weight", "orthogonal, activation", "full, weight",
          "full (orthogonal heads), activation", "orthogonal, learned",
          "orthogonal, learned + STE permutations")  # fmt: skip


def rows(root: Path, paths: tuple[str, ...], family: str) -> dict[str, Any]:
    """The stored runs' rows of one family (``numbers`` of :func:`write_result`), the
    later runs' rows replacing the earlier ones'; runs not stored are skipped."""
    found: dict[str, Any] = {}
    for path in paths:
        if (root / path).is_file():
            record = json.loads((root / path).read_text(encoding="utf-8"))
            found.update(record.get("numbers", record)[family])
    return found


def barriers(root: Path, out: Path) -> Path:
    """One panel per family: share of the naive barrier for each row of :data:`BARS`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FAMILIES), figsize=(11, 3.8), sharey=True)
    for ax, (title, path, family) in zip(axes, FAMILIES, strict=True):
        found = rows(root, path, family)
        labels = [k for k in BARS if k in found]
        shares = [100 * found[k]["share_of_naive"] for k in labels]
        ax.barh(range(len(labels)), shares, color="tab:blue")
        ax.axvline(100, color="grey", lw=0.8)
        ax.axvline(10, color="tab:red", lw=0.8, ls="--")
        ax.set_yticks(range(len(labels)), [SHOWN.get(k, k) for k in labels], fontsize=7)
        ax.invert_yaxis()
        ax.set(title=title, xlabel="loss barrier at α = 0.5, % of naive")
    fig.tight_layout()
    target = out / "transformers_barriers.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def vit_curves(root: Path, out: Path) -> Path:
    """The digits ViTs' test loss and error along the path, for each row of :data:`CURVES`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = rows(root, FAMILIES[2][1], "vit")
    fig, (loss, error) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label in [k for k in CURVES if k in found]:
        curve = found[label]["curve"]
        loss.plot(curve["alpha"], curve["loss"], marker=".", label=SHOWN.get(label, label))
        error.plot(curve["alpha"], [100 * e for e in curve["error"]], marker=".", label=label)
    loss.set(xlabel="α (A → aligned B)", ylabel="test loss", title="digits ViTs: loss")
    error.set(xlabel="α (A → aligned B)", ylabel="test error, %", title="digits ViTs: error")
    loss.legend(fontsize=7)
    fig.tight_layout()
    target = out / "transformers_vit_curves.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "science",
                        help="where the PNGs go")  # fmt: skip
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    written = [barriers(ROOT, args.out), vit_curves(ROOT, args.out)]
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
