"""Evaluation and probe data: tensors from a file, or batches from a user callable.

Sources accepted by :func:`load_data`:

* ``.pt``: ``torch.save({"x": Tensor, "y": Tensor})`` (read with ``weights_only=True``);
  dtypes are kept as saved.
* ``.npz``: arrays ``x`` and ``y``; floating arrays become float32 tensors, integer
  arrays int64, booleans stay boolean.
* ``"package.module:callable"`` or ``"path/to/file.py:callable"``: called without
  arguments, it returns a ``torch.utils.data.Dataset`` (batched in order, no shuffle), a
  ``DataLoader`` (used as is; a shuffling loader yields a new order on each pass), or
  any iterable of ``(x, y)`` batches (read once into a list).

For a language model (``language=``, :class:`LanguageData`) token data are accepted too:

* token ids ``(N, T)`` of an integer dtype: a ``.pt`` holding the tensor itself or
  ``{"x": ids}``, or a ``.npy`` array;
* a tokenizer's output, padded: a ``.pt`` holding
  ``dict(tokenizer(texts, padding=True, return_tensors="pt"))`` or a ``.npz`` with the
  same arrays, i.e. ``input_ids`` ``(N, T)`` integers, and optionally ``attention_mask``
  ``(N, T)`` of 0/1 (integer or boolean, 0 at padding, left or right), ``labels``
  ``(N, T)`` (the ids to score, ``-100`` where not to score; default the ids) and
  ``token_type_ids`` (all 0: one segment, the models' default; other values are
  refused). Padded positions are not scored and the model does not see them (it gets
  the ``attention_mask``); a causal LM scores a next token only where it and the token
  before it are real, so each sequence scores as it would unpadded. Other keys, masks
  other than 0/1, shapes unlike ``input_ids``'s and sequences of no token (a causal LM:
  fewer than 2) are refused;
* a text file (``.txt``), tokenized with the checkpoint's own tokenizer and cut into
  consecutive blocks of ``block_size`` tokens (the remainder is dropped).

Token batches are ``(ids, ids)``, the convention of the language-model scorings of
:mod:`modeconnect.evaluation.scoring` (``"causal_lm"`` scores each next token,
``"masked_lm"`` masks a seeded 15 % of the positions itself), or ``(ids, labels)`` with
:data:`~modeconnect.evaluation.scoring.PAD_LABEL` at padded positions
(:func:`~modeconnect.evaluation.scoring.token_batch`), and hold at most
:data:`TOKENS_PER_BATCH` tokens (fewer examples than ``batch_size`` when needed).

Whatever the source, the result can be iterated more than once.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from modeconnect.errors import ModeconnectError, count_nonfinite
from modeconnect.evaluation.scoring import PAD_LABEL, token_batch
from modeconnect.io.checkpoints import require_dense, torch_load
from modeconnect.io.references import import_callable

__all__ = [
    "DATA_EXTENSIONS",
    "IGNORE_INDEX",
    "TOKENS_PER_BATCH",
    "Batch",
    "LanguageData",
    "check_fits",
    "check_tokens",
    "first_batch",
    "is_data_reference",
    "load_data",
]

Batch = tuple[torch.Tensor, torch.Tensor]
DATA_EXTENSIONS = (".pt", ".npz", ".npy", ".txt")
TEXT_EXTENSIONS = (".txt",)
IGNORE_INDEX = -100
"""A target that is not scored (padding), as PyTorch and Hugging Face write it."""
TOKENS_PER_BATCH = 2048
"""Token batches hold at most this many tokens: logits of ``tokens × vocabulary`` floats
(2048 × 32000 × 4 B = 262 MB for a Llama vocabulary) must not dwarf the weights."""
LM_KINDS = ("causal", "masked")
TOKENIZER_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")
"""What a tokenizer's output may hold (module docstring); ``input_ids`` is required."""


@dataclass(frozen=True)
class LanguageData:
    """How token ids and text become language-model batches (module docstring).

    ``kind``: ``"causal"`` or ``"masked"`` (how the batches are scored).
    ``tokenizer``: the checkpoint directory whose tokenizer reads text files.
    ``block_size``: tokens per example cut from text.
    """

    kind: str = "causal"
    tokenizer: Path | None = None
    block_size: int = 128


def load_data(
    source: str | Path, *, batch_size: int = 500, language: LanguageData | None = None
) -> Sequence[Batch] | Iterable[Batch]:
    """Load ``(x, y)`` batches of at most ``batch_size`` examples from a file or a callable.

    File sources give a list of ``(x[i:i+b], y[i:i+b])`` views; callables give a
    ``DataLoader`` or a list. Every result is re-iterable with the same batches
    (except a shuffling ``DataLoader`` supplied by the user). ``language`` accepts
    token ids and text for a language model (module docstring).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ModeconnectError(
            f"{source}: batch size must be a positive integer, got {batch_size!r}"
        )
    if is_data_reference(source):
        return _load_callable(str(source), batch_size)
    path = Path(source)
    if language is not None:
        tokens = _read_tokens(path, language)
        if tokens is not None:
            return _token_batches(path, tokens, language, batch_size)
    raw_x, raw_y = _read_arrays(path)
    x, y = _tensor(path, "x", raw_x), _tensor(path, "y", raw_y)
    _check_pair(path, x, y)
    if not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool:
        y = y.long()  # class indices: cross-entropy gathers with int64
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def check_fits(
    model: torch.nn.Module,
    data: Iterable[Batch],
    source: str | Path,
    *,
    class_labels: bool = True,
    probe: int = 64,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Run ``model`` on the first batch of ``data``: one clear error if the data do not fit.

    ``weights``: run the model with this state dict (a model built without weights,
    on the meta device), called as :func:`modeconnect.forward.run` calls it.
    The inputs must run through the model (right shape and dtype). With
    ``class_labels`` (a cross-entropy loss), ``y`` must hold class indices: integers
    (not one-hot rows, not floats) of the logits' shape without the class axis, each in
    ``[0, C)``; every batch of a file is checked, a callable's first batch only.
    """
    x, y = first_batch(data)
    logits = _logits(model, x[:probe], source, weights)
    if not class_labels or logits is None:
        return
    _check_label_kind(y, logits, source)
    classes = int(logits.shape[1])
    batches = data if isinstance(data, list) else [(x, y)]
    low = min(int(b[1].min()) for b in batches)
    high = max(int(b[1].max()) for b in batches)
    if low < 0 or high >= classes:
        raise ModeconnectError(
            f"{source}: labels y range over [{low}, {high}] but the model has {classes} "
            f"classes; store class indices in [0, {classes - 1}]"
        )


def _logits(
    model: torch.nn.Module,
    x: torch.Tensor,
    source: str | Path,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor | None:
    from modeconnect.forward import run

    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(x) if weights is None else run(model, weights, (x,))
    except Exception as exc:
        raise ModeconnectError(
            f"{source}: the model cannot run on x of shape {tuple(x.shape)} and dtype "
            f"{str(x.dtype).removeprefix('torch.')} ({type(exc).__name__}: {_one_line(exc)}); "
            "store x in the shape and dtype the model takes"
        ) from exc
    finally:
        for module, training in flags:
            module.training = training
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    return leaves[0] if leaves and leaves[0].dim() >= 2 else None


def _check_label_kind(y: torch.Tensor, logits: torch.Tensor, source: str | Path) -> None:
    expected = (logits.shape[0], *logits.shape[2:])
    if y.is_floating_point() and tuple(y.shape[1:]) == tuple(logits.shape[1:]):
        raise ModeconnectError(
            f"{source}: labels y {tuple(y.shape)} {str(y.dtype).removeprefix('torch.')} look "
            "one-hot (a row per example); store class indices instead: y.argmax(1)"
        )
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise ModeconnectError(
            f"{source}: labels y have dtype {str(y.dtype).removeprefix('torch.')}; store class "
            "indices as integers (torch.long), or pass --loss mse for regression targets"
        )
    if tuple(y.shape[1:]) != tuple(expected[1:]):
        want = "(N" + "".join(f", {d}" for d in expected[1:]) + ")"
        raise ModeconnectError(
            f"{source}: labels y have shape {tuple(y.shape)} but the model's outputs "
            f"{tuple(logits.shape)} need labels of shape {want}; store one class index per "
            "output position"
        )


def first_batch(data: Iterable[Batch]) -> Batch:
    """The first ``(x, y)`` batch of ``data``, e.g. the probe batch of the equivalence check."""
    for batch in data:
        return _as_batch(batch, "data", 0)
    raise ModeconnectError("data: the data source yielded no batches; pass non-empty data")


# --------------------------------------------------------------------------- files


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def is_data_reference(source: str | Path) -> bool:
    """``module:callable`` or ``file.py:callable``, as opposed to a path.

    A colon also occurs in paths (``C:\\data\\x.pt``, ``run:final.npz``): an existing file,
    or a text after the last colon that is not a dotted name or ends in a data extension,
    makes it a path.
    """
    if isinstance(source, Path) or ":" not in source or Path(source).exists():
        return False
    target, _, attr = source.rpartition(":")
    if not target or attr.lower().endswith(DATA_EXTENSIONS):
        return False
    return all(part.isidentifier() for part in attr.split("."))


def _existing(path: Path) -> Path:
    if not path.exists():
        raise ModeconnectError(f"{path}: data file not found; check the path")
    if not path.is_file():
        raise ModeconnectError(f"{path}: is not a file; pass a .pt or .npz data file")
    return path


def _read_arrays(path: Path) -> tuple[object, object]:
    suffix = _existing(path).suffix.lower()
    if suffix == ".pt":
        return _xy(path, _torch_load(path))
    if suffix == ".npz":
        return _read_npz(path)
    if suffix in (".npy", *TEXT_EXTENSIONS):
        raise ModeconnectError(
            f"{path}: {suffix} data hold token ids or text, which only a language model "
            "read from a Hugging Face checkpoint directory can score; pass a .pt or .npz "
            "file with x and y"
        )
    raise ModeconnectError(
        f"{path}: unknown data extension {suffix or '(none)'!r}; supported: "
        f"{', '.join(DATA_EXTENSIONS)}, or 'module:callable' / 'file.py:callable'"
    )


# --------------------------------------------------------------------------- token data


def _read_tokens(path: Path, language: LanguageData) -> Batch | None:
    """``(ids, labels)`` ``(N, T)`` from a token, tokenizer-output or text file; ``None`` for
    an ``(x, y)`` file. ``labels`` is ``ids`` itself unless the file pads or labels."""
    suffix = _existing(path).suffix.lower()
    if suffix in TEXT_EXTENSIONS:
        ids = _tokenize(path, language)
    elif suffix == ".npy":
        ids = _check_ids(path, _read_npy(path))
    elif suffix == ".npz":
        arrays = _npz_arrays(path)
        if "input_ids" not in arrays:
            return None
        tensors = {
            k: _npz_tensor(path, k, np.asarray(v)) if k in TOKENIZER_KEYS else v
            for k, v in arrays.items()
        }  # another key is refused as such, not for its dtype
        return _tokenizer_output(path, tensors)
    elif suffix == ".pt":
        content = _torch_load(path)
        if isinstance(content, Mapping) and "input_ids" in content:
            return _tokenizer_output(path, content)
        if isinstance(content, torch.Tensor):
            ids = _check_ids(path, content)
        elif isinstance(content, Mapping) and "x" in content and "y" not in content:
            ids = _check_ids(path, _tensor(path, "x", content["x"]))
        else:
            return None
    else:
        return None
    return ids, ids


def _tokenizer_output(path: Path, content: Mapping) -> Batch:
    """A tokenizer's output (module docstring) as ``(ids, labels)``, checked as hostile input."""
    extra = [k for k in content if k not in TOKENIZER_KEYS]
    if extra:
        shown = ", ".join(repr(str(k)[:40]) for k in extra[:5])
        raise ModeconnectError(
            f"{path}: unexpected key{'s' if len(extra) > 1 else ''} {shown} beside "
            "'input_ids'; a tokenizer's output holds "
            f"{', '.join(TOKENIZER_KEYS)}: drop the others"
        )
    batch = token_batch(
        content["input_ids"], content.get("attention_mask"), content.get("labels"),
        where=str(path),
    )  # fmt: skip
    if "token_type_ids" in content:
        _check_segments(path, content["token_type_ids"], batch[0])
    return batch


def _check_scored(path: Path, ids: torch.Tensor, labels: torch.Tensor, kind: str) -> None:
    """Every padded sequence can be scored, and something is: labels of a tokenizer's output."""
    real = labels != PAD_LABEL
    if kind == "causal":
        tokens = real.sum(dim=1)
        short = (tokens < 2).nonzero()
        if short.numel():  # only padding leaves fewer than T >= 2 tokens
            row = int(short[0])
            raise ModeconnectError(
                f"{path}: 'attention_mask' row {row} holds {int(tokens[row])} token "
                f"({short.numel()} such rows of {len(ids)}); next-token prediction needs at "
                "least 2 per sequence: drop those rows"
            )
        scored = real[:, :-1] & real[:, 1:] & (labels[:, 1:] >= 0)
    else:
        scored = labels >= 0
    if not bool(scored.any()):
        raise ModeconnectError(
            f"{path}: no position is scored (every label is -100 or padding); store labels "
            "equal to input_ids where the model's prediction counts"
        )


def _check_segments(path: Path, types: object, ids: torch.Tensor) -> None:
    """``token_type_ids``: one segment (all 0, the models' default), so they are not passed."""
    if not isinstance(types, torch.Tensor) or types.shape != ids.shape:
        found = tuple(types.shape) if isinstance(types, torch.Tensor) else type(types).__name__
        raise ModeconnectError(
            f"{path}: 'token_type_ids' is {found} but 'input_ids' has shape "
            f"{tuple(ids.shape)}; store one value per token"
        )
    if types.is_floating_point() or types.is_complex() or bool((types != 0).any()):
        raise ModeconnectError(
            f"{path}: 'token_type_ids' mark a second segment (values other than 0), which "
            "modeconnect does not pass to the model; store one segment per sequence, or "
            "drop the key"
        )


def _read_npy(path: Path) -> torch.Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except MemoryError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise ModeconnectError(
            f"{path}: cannot read the .npy file ({type(exc).__name__}: {_one_line(exc)}); "
            "save token ids with numpy.save(path, ids)"
        ) from exc
    if not np.issubdtype(array.dtype, np.integer):
        raise ModeconnectError(
            f"{path}: holds {array.dtype} values; token ids must be integers of shape (N, T)"
        )
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


def _check_ids(path: Path, ids: torch.Tensor) -> torch.Tensor:
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ModeconnectError(
            f"{path}: token ids have dtype {str(ids.dtype).removeprefix('torch.')}; store them "
            "as integers (torch.long) of shape (N, T)"
        )
    if ids.dim() != 2 or ids.numel() == 0:
        raise ModeconnectError(
            f"{path}: token ids have shape {tuple(ids.shape)}; store one sequence per row, "
            "shape (N, T) with N, T >= 1"
        )
    return ids.long()


def _tokenize(path: Path, language: LanguageData) -> torch.Tensor:
    """The file's text as consecutive blocks of ``block_size`` tokens ``(N, block_size)``."""
    if language.tokenizer is None:
        raise ModeconnectError(
            f"{path}: text data are tokenized with the checkpoint's tokenizer, and none is "
            "known; pass token ids (.pt/.npy) or a Hugging Face checkpoint directory"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ModeconnectError(
            f"{path}: is not UTF-8 text ({_one_line(exc)}); convert it to UTF-8"
        ) from exc
    from modeconnect.io.hf import load_tokenizer, quiet_transformers

    tokenizer = load_tokenizer(language.tokenizer)
    with quiet_transformers():  # "sequence longer than the model's maximum": cut below
        ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    n = len(ids) // language.block_size
    if n == 0:
        raise ModeconnectError(
            f"{path}: tokenizes to {len(ids)} tokens, fewer than one block of "
            f"{language.block_size}; pass more text or a smaller --block-size"
        )
    return torch.tensor(ids[: n * language.block_size], dtype=torch.long).view(n, -1)


def _token_batches(
    path: Path, tokens: Batch, language: LanguageData, batch_size: int
) -> list[Batch]:
    ids, labels = tokens
    if language.kind not in LM_KINDS:
        raise ModeconnectError(
            f"{path}: language-model kind {language.kind!r} is not one of {', '.join(LM_KINDS)}"
        )
    if language.kind == "causal" and ids.shape[1] < 2:
        raise ModeconnectError(
            f"{path}: sequences of {ids.shape[1]} token cannot be scored by next-token "
            "prediction; store at least 2 tokens per sequence"
        )
    if labels is not ids:
        _check_scored(path, ids, labels, language.kind)
    size = max(1, min(batch_size, TOKENS_PER_BATCH // ids.shape[1]))
    if labels is ids:  # y is x, the very tensor: the scorings see at once that nothing is padded
        return [(part, part) for part in ids.split(size)]
    return [(ids[i : i + size], labels[i : i + size]) for i in range(0, len(ids), size)]


def check_tokens(
    batches: Iterable[Batch], source: str | Path, vocab_size: int, max_length: int | None
) -> None:
    """Token ids in ``[0, vocab_size)``, targets too (or :data:`IGNORE_INDEX`, or
    :data:`~modeconnect.evaluation.scoring.PAD_LABEL` at padding), length in range.

    Padded positions hold ids too (the tokenizer's pad token), checked like the others.
    """
    for x, y in batches:
        for name, t, marks in (("token ids", x, ()), ("targets", y, (IGNORE_INDEX, PAD_LABEL))):
            if t.is_floating_point() or t.dim() != 2:
                raise ModeconnectError(
                    f"{source}: {name} have shape {tuple(t.shape)} and dtype "
                    f"{str(t.dtype).removeprefix('torch.')}; a language model takes integer "
                    "ids of shape (N, T)"
                )
            outside = t < 0
            for mark in marks:
                outside &= t != mark
            bad = t[(t >= vocab_size) | outside]
            if bad.numel():
                raise ModeconnectError(
                    f"{source}: {name} {tuple(t.shape)} hold {int(bad[0])}, outside the "
                    f"model's vocabulary [0, {vocab_size}); tokenize with the model's tokenizer"
                )
        if max_length is not None and x.shape[1] > max_length:
            raise ModeconnectError(
                f"{source}: sequences of {x.shape[1]} tokens are longer than the model's "
                f"{max_length} positions; cut them (or pass a smaller --block-size)"
            )


def _torch_load(path: Path) -> object:
    resave = (
        "torch.save({'x': x, 'y': y}, path) (a tokenizer's output: torch.save(dict(enc), path))"
    )
    content = torch_load(path, "data file", resave)
    named = content.items() if isinstance(content, Mapping) else [("the tensor", content)]
    for name, value in named:
        if isinstance(value, torch.Tensor):
            require_dense(path, name if name == "the tensor" else repr(name)[:80], value)
    return content


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except MemoryError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ModeconnectError(
            f"{path}: cannot read the .npz file ({type(exc).__name__}: "
            f"{_one_line(exc)}); save it with numpy.savez(path, x=x, y=y)"
        ) from exc


def _read_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _xy(path, _npz_arrays(path))
    return _npz_tensor(path, "x", np.asarray(x)), _npz_tensor(path, "y", np.asarray(y))


def _npz_tensor(path: Path, name: str, array: np.ndarray) -> torch.Tensor:
    if np.issubdtype(array.dtype, np.floating):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if np.issubdtype(array.dtype, np.integer):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    if array.dtype == np.bool_:
        return torch.from_numpy(np.ascontiguousarray(array))
    raise ModeconnectError(
        f"{path}: array {name!r} has dtype {array.dtype}; use floating, integer or boolean arrays"
    )


def _xy(path: Path, content: object) -> tuple[object, object]:
    """The ``x`` and ``y`` entries of a loaded mapping, or an error listing what was found."""
    if not isinstance(content, Mapping):
        raise ModeconnectError(
            f"{path}: expected a dict with keys 'x' and 'y', found {type(content).__name__}"
        )
    if "input_ids" in content:
        raise ModeconnectError(
            f"{path}: holds a tokenizer's output (input_ids), which only a language model "
            "read from a Hugging Face checkpoint directory can score; pass a .pt or .npz file "
            "with x and y"
        )
    if "x" not in content or "y" not in content:
        found = ", ".join(repr(str(k)) for k in sorted(content, key=str)) or "none"
        raise ModeconnectError(
            f"{path}: expected keys 'x' and 'y', found keys [{found}]; "
            "save inputs as 'x' and labels as 'y'"
        )
    return content["x"], content["y"]


def _tensor(path: Path, name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ModeconnectError(f"{path}: {name!r} has type {type(value).__name__}, not Tensor")
    if value.dim() == 0:
        raise ModeconnectError(f"{path}: {name!r} is a scalar; it needs a batch dimension")
    return value


def _check_pair(path: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    if len(x) != len(y):
        raise ModeconnectError(
            f"{path}: 'x' and 'y' have different lengths: x {tuple(x.shape)}, y {tuple(y.shape)}"
        )
    if len(x) == 0:
        raise ModeconnectError(f"{path}: the data is empty (x {tuple(x.shape)}); pass examples")
    for name, t in (("x", x), ("y", y)):
        bad = count_nonfinite(t)
        if bad:
            raise ModeconnectError(
                f"{path}: {name!r} {tuple(t.shape)} holds {bad} non-finite values (NaN or inf); "
                "clean the data (e.g. torch.nan_to_num) before using it"
            )


# --------------------------------------------------------------------------- callables


def _load_callable(ref: str, batch_size: int) -> Sequence[Batch] | Iterable[Batch]:
    """Call ``ref`` and turn its result into re-iterable batches."""
    result = import_callable(ref)()
    if isinstance(result, DataLoader):
        _check_sized(ref, result)
        return result
    if isinstance(result, Dataset):
        _check_sized(ref, result)
        return DataLoader(result, batch_size=batch_size, shuffle=False)
    if isinstance(result, Iterable) and not isinstance(result, (torch.Tensor, str, bytes, Mapping)):
        batches = [_as_batch(batch, ref, i) for i, batch in enumerate(result)]
        if not batches:
            raise ModeconnectError(f"{ref}: the callable returned no batches; return data")
        return batches
    raise ModeconnectError(
        f"{ref}: the callable returned an object of type {type(result).__name__}; "
        "return a torch Dataset, a DataLoader or an iterable of (x, y) batches"
    )


def _check_sized(ref: str, data: Dataset | DataLoader) -> None:
    """Refuse an empty map-style dataset early; iterable datasets have no length to check."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return
    if len(dataset) == 0:
        raise ModeconnectError(f"{ref}: the callable returned an empty dataset; return data")


def _as_batch(batch: object, source: object, index: int) -> Batch:
    """Check that one batch is an ``(x, y)`` pair of tensors."""
    if (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and all(isinstance(t, torch.Tensor) for t in batch)
    ):
        return batch[0], batch[1]
    raise ModeconnectError(
        f"{source}: batch {index} is {_describe_batch(batch)}; each batch must be an (x, y) "
        "pair of tensors"
    )


def _describe_batch(batch: object) -> str:
    if isinstance(batch, (tuple, list)):
        kinds = ", ".join(type(t).__name__ for t in batch[:4])
        return f"a {type(batch).__name__} of {len(batch)} items ({kinds})"
    return f"a {type(batch).__name__}"
