"""Tests for modeconnect.io.data: every source kind loads re-iterable (x, y) batches."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from modeconnect.errors import ModeconnectError
from modeconnect.io.data import Batch, first_batch, load_data

SOURCE = """
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

torch.manual_seed(0)
X = torch.randn(10, 3)
Y = torch.arange(10) % 2


def dataset():
    return TensorDataset(X, Y)


def loader():
    return DataLoader(TensorDataset(X, Y), batch_size=4)


def generator():
    for i in range(0, 10, 3):
        yield X[i : i + 3], Y[i : i + 3]


def batch_list():
    return [(X[:5], Y[:5]), [X[5:], Y[5:]]]


def empty_dataset():
    return TensorDataset(X[:0], Y[:0])


def empty_generator():
    return iter(())


def stream():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(X, Y))

    return Stream()


def number():
    return 3


def triples():
    return [(X, Y, Y)]


def tensor():
    return X
"""


@pytest.fixture
def source_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_data.py"
    path.write_text(SOURCE)
    return path


@pytest.fixture
def xy() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(10, 3), torch.arange(10) % 2


def _esc(path: Path | str) -> str:
    return re.escape(str(path))


def _assert_reiterable(data: Iterable[Batch]) -> list[Batch]:
    first, second = list(data), list(data)
    assert len(first) == len(second) > 0
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        torch.testing.assert_close(x1, x2)
        torch.testing.assert_close(y1, y2)
    return first


def _concat(batches: list[Batch]) -> Batch:
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


# --------------------------------------------------------------------------- files


def test_pt_file(tmp_path: Path, xy: Batch) -> None:
    x, y = xy
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    batches = _assert_reiterable(load_data(tmp_path / "d.pt", batch_size=4))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    torch.testing.assert_close(_concat(batches), (x, y))


def test_pt_file_from_string_path(tmp_path: Path, xy: Batch) -> None:
    torch.save({"x": xy[0].double(), "y": xy[1]}, tmp_path / "d.pt")
    (bx, by), *_ = load_data(str(tmp_path / "d.pt"))
    assert bx.dtype == torch.float64 and len(bx) == 10  # .pt keeps dtypes; one batch of 500


def test_npz_file_converts_dtypes(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(7, 2))  # float64
    y = np.arange(7, dtype=np.int32)
    np.savez(tmp_path / "d.npz", x=x, y=y, extra=np.zeros(1))
    batches = _assert_reiterable(load_data(tmp_path / "d.npz", batch_size=3))
    bx, by = _concat(batches)
    assert (bx.dtype, by.dtype) == (torch.float32, torch.int64)
    torch.testing.assert_close(bx, torch.from_numpy(x).float())
    torch.testing.assert_close(by, torch.arange(7))


def test_npz_bool_labels_and_float_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((2, 1), np.float16), y=np.array([True, False]))
    ((bx, by),) = load_data(tmp_path / "d.npz")
    assert (bx.dtype, by.dtype) == (torch.float32, torch.bool)


def test_first_batch(tmp_path: Path, xy: Batch) -> None:
    torch.save({"x": xy[0], "y": xy[1]}, tmp_path / "d.pt")
    bx, by = first_batch(load_data(tmp_path / "d.pt", batch_size=3))
    torch.testing.assert_close(bx, xy[0][:3])
    torch.testing.assert_close(by, xy[1][:3])


def test_first_batch_errors() -> None:
    with pytest.raises(ModeconnectError, match="yielded no batches"):
        first_batch([])
    with pytest.raises(ModeconnectError, match=r"batch 0 is a tuple of 3 items"):
        first_batch([(torch.ones(1), torch.ones(1), torch.ones(1))])  # type: ignore[list-item]


# --------------------------------------------------------------------------- file errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: data file not found"):
        load_data(path)


def test_windows_style_path_is_not_a_callable(tmp_path: Path) -> None:
    with pytest.raises(ModeconnectError, match="data file not found"):
        load_data("C:\\data\\eval.pt")


def test_path_with_colon_is_a_path(tmp_path: Path, xy: Batch) -> None:
    path = tmp_path / "run:final.pt"
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: data file not found"):
        load_data(str(path))
    torch.save({"x": xy[0], "y": xy[1]}, path)
    assert len(list(load_data(str(path), batch_size=5))) == 2


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModeconnectError, match=f"{_esc(tmp_path)}: is not a file"):
        load_data(tmp_path)


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("1,2\n")
    with pytest.raises(ModeconnectError, match=rf"{_esc(path)}: unknown data extension '\.csv'"):
        load_data(path)


@pytest.mark.parametrize("ext", [".pt", ".npz"])
@pytest.mark.parametrize(
    ("shapes", "pattern"),
    [
        (
            {"inputs": (2,), "labels": (2,)},
            r"expected keys 'x' and 'y', found keys \['inputs', 'labels'\]",
        ),
        ({"x": (4, 3), "y": (5,)}, r"'x' and 'y' have different lengths: x \(4, 3\), y \(5,\)"),
        ({"x": (0, 3), "y": (0,)}, r"the data is empty \(x \(0, 3\)\)"),
    ],
    ids=["missing_keys", "length_mismatch", "empty"],
)
def test_wrong_keys_or_lengths(tmp_path: Path, ext: str, shapes: dict, pattern: str) -> None:
    """Arrays of ones of these shapes under these keys, saved as ``.pt`` and as ``.npz``."""
    path = tmp_path / f"d{ext}"
    if ext == ".pt":
        torch.save({key: torch.ones(shape) for key, shape in shapes.items()}, path)
    else:
        np.savez(path, **{key: np.ones(shape) for key, shape in shapes.items()})
    with pytest.raises(ModeconnectError, match=rf"{_esc(path)}: {pattern}"):
        load_data(path)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ([torch.ones(1)], "expected a dict with keys 'x' and 'y', found list"),
        ({"x": [1, 2], "y": torch.ones(2)}, "'x' has type list, not Tensor"),
        ({"x": torch.ones(2), "y": torch.tensor(1.0)}, "'y' is a scalar"),
    ],
)
def test_bad_pt_content(tmp_path: Path, content: object, pattern: str) -> None:
    path = tmp_path / "d.pt"
    torch.save(content, path)
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: {pattern}"):
        load_data(path)


@pytest.mark.parametrize("ext", [".pt", ".npz"])
def test_corrupt_file(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"d{ext}"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: cannot read the"):
        load_data(path)


def test_pickled_pt_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.pt"
    torch.save({"x": torch.nn.Linear(1, 1), "y": torch.ones(1)}, path)
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: contains pickled code .*: refused"):
        load_data(path)


@pytest.mark.parametrize(
    ("x", "pattern"),
    [
        (np.array(["a", "b"]), "array 'x' has dtype <U1"),
        (np.ones(2, dtype=np.complex64), "array 'x' has dtype complex64"),
    ],
)
def test_npz_bad_dtype(tmp_path: Path, x: np.ndarray, pattern: str) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.ones(2))
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: {pattern}"):
        load_data(path)


def test_npz_object_array_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object), y=np.ones(2))
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: cannot read the .npz file"):
        load_data(path)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_bad_batch_size(tmp_path: Path, size: object) -> None:
    with pytest.raises(ModeconnectError, match="batch size must be a positive integer"):
        load_data(tmp_path / "d.pt", batch_size=size)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- callables


def test_callable_dataset(source_file: Path) -> None:
    data = load_data(f"{source_file}:dataset", batch_size=4)
    assert isinstance(data, DataLoader)
    batches = _assert_reiterable(data)
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    _assert_reiterable(load_data(f"{source_file}:stream", batch_size=4))


def test_callable_loader_used_as_is(source_file: Path) -> None:
    data = load_data(f"{source_file}:loader", batch_size=100)
    assert isinstance(data, DataLoader) and data.batch_size == 4
    _assert_reiterable(data)


def test_callable_generator_is_materialised(source_file: Path) -> None:
    data = load_data(f"{source_file}:generator")
    assert isinstance(data, list)
    batches = _assert_reiterable(data)
    assert [len(b[0]) for b in batches] == [3, 3, 3, 1]
    assert all(isinstance(b, tuple) for b in batches)


def test_callable_list(source_file: Path) -> None:
    batches = _assert_reiterable(load_data(f"{source_file}:batch_list"))
    assert [len(b[0]) for b in batches] == [5, 5]


def test_module_ref(tmp_path: Path, source_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    bx, _ = first_batch(load_data("my_data:dataset", batch_size=2))
    assert bx.shape == (2, 3)


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("number", "the callable returned an object of type int; return a torch Dataset"),
        ("tensor", "the callable returned an object of type Tensor"),
        ("empty_dataset", "the callable returned an empty dataset"),
        ("empty_generator", "the callable returned no batches"),
        ("triples", r"batch 0 is a tuple of 3 items \(Tensor, Tensor, Tensor\)"),
    ],
)
def test_callable_errors(source_file: Path, name: str, pattern: str) -> None:
    ref = f"{source_file}:{name}"
    with pytest.raises(ModeconnectError, match=f"{_esc(ref)}: {pattern}"):
        load_data(ref)


def test_callable_import_error(source_file: Path) -> None:
    with pytest.raises(ModeconnectError, match="has no attribute 'nope'"):
        load_data(f"{source_file}:nope")
