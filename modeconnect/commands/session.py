"""What every command does first, once: check its outputs, load, build, and check the data.

:func:`open_session` runs the same sequence for ``align``, ``spec``, ``barrier``,
``compare`` and ``merge``:

1. plan the outputs (:class:`~modeconnect.io.targets.Outputs`): every target is
   checked against every input before anything is loaded;
2. load the checkpoints, choose and build the architecture (a reference read from a
   file only under :class:`~modeconnect.io.references.Trust`), and require each
   file to fit the model and the first file; floating tensors are brought to the
   model's dtype (the stored dtypes are kept for writing back);
3. load the evaluation data (``--data``) and the training data (``--train``) and run
   the model on each once, so that data that do not fit get one line naming the file;
4. choose the probe batch the guard and the tracer use, one way for every command:
   ``--input-shape`` / ``--input-dtype`` if given, else the first examples of
   ``--data`` (or ``--train``), else a batch inferred from the model's first layer.

Hugging Face checkpoint directories go through the same steps: output folders are
planned like files (``--out DIR`` writes a ``save_pretrained`` directory), the model
is built without weights and the checkpoints stay on disk, and a language model
(a ``...ForCausalLM`` or ``...ForMaskedLM`` class) takes token ids or text as data
(:class:`~modeconnect.io.data.LanguageData`), checked against its vocabulary
and context length instead of being run; its probe is a few short sequences.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modeconnect.choices import INPUT_DTYPES
from modeconnect.commands.options import Options
from modeconnect.devices import moved_batches, resolve_device
from modeconnect.errors import ModeconnectError
from modeconnect.forward import lm_kind
from modeconnect.guard import Equivalence, check_written, require_writable, require_written
from modeconnect.io.checkpoints import (
    Checkpoint,
    checkpoint_writer,
    load_models,
    model_dtype,
    restore_dtypes,
)
from modeconnect.io.data import (
    Batch,
    LanguageData,
    check_fits,
    check_tokens,
    is_data_reference,
    load_data,
)
from modeconnect.io.hf import HFDirectory, directory_writer
from modeconnect.io.references import reference_file
from modeconnect.io.targets import Fill, Outputs
from modeconnect.probe import PROBE_SIZE, probe_inputs
from modeconnect.progress import ProgressFn
from modeconnect.timing import Timings

__all__ = ["PROBE_SIZE", "Session", "input_files", "open_session", "parse_dtype"]

PROBE_SEQUENCES = (2, 64)
"""A language model's probe: at most 2 sequences of at most 64 tokens. The guard runs B
and aligned B on it (at 1 B parameters a pass costs ~2 GFLOP per token) and compares
logits of ``tokens × vocabulary`` in float64 (64 MB for 128 tokens of a 32000 vocabulary)."""
BLOCK_SIZE = 512
"""Tokens per example cut from text, unless the model has fewer positions."""
_POSITIONS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len")

DTYPES = {**{name: getattr(torch, name) for name in INPUT_DTYPES}, "int": torch.long}
"""Every dtype name the command line takes (:data:`modeconnect.choices.INPUT_DTYPES`);
``int`` means token ids, as ``long`` does."""


def input_files(
    checkpoints: Iterable[str | Path | None],
    *,
    data: Iterable[str | Path | None] = (),
    model: str | None = None,
) -> list[Path]:
    """Every file a command reads, for :meth:`Outputs.plan`: checkpoints, data files (or the
    Python file a ``file.py:callable`` data source names) and the file a model reference names.
    """
    files = [Path(p) for p in checkpoints if p is not None]
    for source in data:
        if source is None:
            continue
        named = reference_file(str(source)) if is_data_reference(source) else Path(source)
        if named is not None:
            files.append(named)
    model_file = reference_file(model)
    return files + ([model_file] if model_file is not None else [])


@dataclass(frozen=True, eq=False)
class Session:
    """The loaded inputs of one command, and its checked outputs."""

    checkpoints: tuple[Checkpoint, ...]
    model: nn.Module
    model_ref: str
    model_kwargs: Mapping[str, Any]
    outputs: Outputs
    probe: tuple[Tensor, ...]
    data: Sequence[Batch] | None = None
    train: Sequence[Batch] | None = None
    timings: Timings = field(default_factory=Timings)
    language: LanguageData | None = None
    """How a language model's data were made (``None``: not a language model)."""
    scoring: Any = None
    """The language model's scoring (``CausalLMScoring``, ``MaskedLMScoring``), else ``None``."""
    placed: tuple[Mapping[str, Tensor], ...] | None = None
    """The checkpoints' tensors on the session's device (:meth:`on`); ``None``: where they
    were loaded (the CPU, or on disk)."""

    @property
    def state_dicts(self) -> list[Mapping[str, Tensor]]:
        """The tensors of each checkpoint, on the session's device (:meth:`on`)."""
        if self.placed is not None:
            return list(self.placed)
        return [c.state_dict for c in self.checkpoints]

    def on(self, device: str | torch.device | None) -> Session:
        """This session with the model, the checkpoints' tensors, the data and the probe on
        ``device`` (a name :func:`~modeconnect.devices.resolve_device` takes); on the CPU,
        the session itself, unchanged.

        The checkpoints keep their stored tensors (writers copy from them, in their stored
        dtypes and names); a study reads :attr:`state_dicts`. A lazy checkpoint is read
        whole onto the device.
        """
        where = resolve_device(device)
        if where.type == "cpu":
            return self
        self.model.to(where)
        return replace(
            self,
            placed=tuple({k: v.to(where) for k, v in c.state_dict.items()}
                         for c in self.checkpoints),
            probe=tuple(x.to(where) for x in self.probe),
            data=None if self.data is None else moved_batches(self.data, where, None),
            train=None if self.train is None else moved_batches(self.train, where, None),
        )  # fmt: skip

    def rounded_dtypes(self, like: Checkpoint) -> dict[str, torch.dtype]:
        """The tensors ``like`` stores in a coarser floating dtype than the model runs in
        (writers round what they write to these), with those dtypes."""
        runs = model_dtype(self.model)
        return {k: d for k, d in like.dtypes.items()
                if d.is_floating_point and d.itemsize < runs.itemsize}  # fmt: skip

    def require_writable(self, like: Checkpoint, values_change: bool) -> None:
        """Before any work: refuse an output in ``like``'s dtypes that the guard could not
        check as written (:func:`~modeconnect.guard.require_writable`; float8) when a larger
        symmetry than permutations will make new values (``values_change``)."""
        if values_change:
            require_writable(self.rounded_dtypes(like))

    def check_written(
        self,
        b: Mapping[str, Tensor],
        aligned: Mapping[str, Tensor],
        like: Checkpoint,
        values_change: bool,
    ) -> Equivalence | None:
        """The guard on aligned ``b`` as ``like``'s stored dtypes will round it
        (:func:`~modeconnect.guard.check_written`), required to pass; ``None`` when nothing
        is rounded: ``like`` is stored no coarser than the model runs, or only permutations
        moved B's values (``values_change`` false), which any dtype holds exactly."""
        coarse = self.rounded_dtypes(like)
        if not values_change or not coarse:
            return None
        eq = check_written(self.model, b, aligned, coarse, self.probe)
        require_written(eq)
        return eq

    @property
    def lazy(self) -> bool:
        """The checkpoints stay on disk (Hugging Face directories): keep no copies of them."""
        return any(c.lazy for c in self.checkpoints)

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(c.path for c in self.checkpoints)

    def checkpoint_writer(
        self,
        path: Path,
        state_dict: Mapping[str, Tensor],
        *,
        like: Checkpoint,
        metadata: Mapping[str, str],
        progress: ProgressFn | None = None,
    ) -> Fill:
        """What writes ``state_dict`` to ``path``: in the dtypes ``like`` stored, naming the
        session's architecture, so that the output loads back without ``--model``.

        A folder target gets a ``save_pretrained`` directory shaped like ``like``'s
        (:func:`~modeconnect.io.hf.directory_writer`), written one shard at a time.
        """
        if self.outputs.is_folder_path(path):
            return directory_writer(
                state_dict, _directory(like), dtypes=like.dtypes, metadata=metadata,
                progress=progress, task=f"writing {Path(path).name}",
                names=getattr(like.state_dict, "names", None),
            )  # fmt: skip
        return checkpoint_writer(
            path, restore_dtypes(state_dict, like.dtypes), model_ref=self.model_ref,
            model_kwargs=self.model_kwargs, metadata=metadata,
        )  # fmt: skip


def _directory(ckpt: Checkpoint) -> HFDirectory:
    if ckpt.directory is None:  # planned away: folder targets need directory inputs
        raise ModeconnectError(
            f"{ckpt.path}: only a Hugging Face checkpoint directory can be written as one; "
            "name a .pt or .safetensors output"
        )
    return ckpt.directory


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"long"`` -> ``torch.long``; a dtype passes through."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModeconnectError(
            f"--input-dtype: unknown dtype {dtype!r}; valid: {', '.join(sorted(DTYPES))}"
        )
    return DTYPES[dtype]


def open_session(
    checkpoints: Sequence[str | Path],
    options: Options,
    *,
    outputs: Sequence[tuple[str, str | Path | None, str]] = (),
    class_labels: bool = True,
    train_labels: bool = False,
    extra_inputs: Sequence[str | Path | None] = (),
    seed: int = 0,
    place: bool = False,
) -> Session:
    """Check the outputs, load and check everything a command reads (module docstring).

    ``options`` are the command's (:mod:`modeconnect.commands.options`): its sources,
    inputs, run and ``force``. ``outputs`` are ``(option, path, kind)`` triples (``path``
    ``None`` when not asked for); ``extra_inputs`` are further files the command reads
    (a reference checkpoint). ``class_labels`` / ``train_labels``: the labels of
    ``data`` / ``train`` must be class indices (a cross-entropy evaluation); ``seed``:
    of a masked language model's masked positions. The run's ``progress`` hears of the
    shards read. ``place``: run on the options' device (:meth:`Session.on`), for the
    studies that hold the whole models; ``align`` and ``merge`` place what they evaluate
    point by point themselves, to keep their memory bounded.
    """
    sources, inputs, run = options.sources, options.inputs, options.run
    timings = run.clock()
    where = resolve_device(run.device) if place else None  # a missing device: before loading
    plan = Outputs.plan(
        outputs,
        inputs=input_files(
            [*checkpoints, *extra_inputs], data=[inputs.data, inputs.train], model=sources.model
        ),
        force=options.force,
        folders=bool(checkpoints) and all(Path(c).is_dir() for c in checkpoints),
    )
    with timings.phase("load"):
        loaded = load_models(checkpoints, sources.model, sources.model_kwargs,
                             trust=sources.trust, progress=run.progress)  # fmt: skip
        arch = loaded.architecture
        net = arch.model
        first = loaded.checkpoints[0] if loaded.checkpoints else None
        language = _language(first, inputs.block_size)
        reader = _Reader(net, first, inputs.batch_size, language)
        evaluation = reader.load(inputs.data, class_labels)
        training = reader.load(inputs.train, train_labels)
        probe = choose_probe(net, evaluation or training, inputs.input_shape,
                             parse_dtype(inputs.input_dtype))  # fmt: skip
        if language is not None and inputs.input_shape is None:
            probe = tuple(x[: PROBE_SEQUENCES[0], : PROBE_SEQUENCES[1]] for x in probe)
        if first is not None and first.lazy:
            _first_pass(net, first, probe)
        scoring = _scoring(first, language, seed)
    session = Session(loaded.checkpoints, net, arch.ref, dict(arch.kwargs), plan, probe,
                      evaluation, training, timings, language, scoring)  # fmt: skip
    return session.on(where) if where is not None else session


def _first_pass(model: nn.Module, ckpt: Checkpoint, probe: tuple[Tensor, ...]) -> None:
    """Run the model once on a slice of the probe with the first checkpoint's weights.

    Measured (torch 2.13 CPU, 2 threads, a Llama read from bfloat16 files): the first
    forward pass of a process that follows large matrix products (weight matching)
    differed from every later pass by up to 1.6e-4 relative (it starts in the rotary
    cos/sin) in 5 of 9 runs, enough to fail the guard; with one pass before, in 0 of 20
    (with one thread, 0 of 5 either way). This is that pass; it also shows that the
    probe runs.
    """
    from modeconnect.forward import eval_mode, run

    tiny = tuple(x[:1, :4] if x.dim() > 1 else x[:1] for x in probe)
    with eval_mode(model), torch.no_grad():
        try:
            run(model, ckpt.state_dict, tiny)
        except ModeconnectError:
            raise
        except Exception as exc:
            shapes = ", ".join(f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
                               for x in tiny)  # fmt: skip
            raise ModeconnectError(
                f"{ckpt.path}: the model cannot run on probe inputs {shapes} "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); pass data "
                "(or --input-shape / --input-dtype) that the model takes"
            ) from exc


def _scoring(ckpt: Checkpoint | None, language: LanguageData | None, seed: int) -> Any:
    """Next-token scoring for a causal LM; masked-token scoring, seeded, for a masked LM."""
    if language is None or ckpt is None or ckpt.directory is None:
        return None
    from modeconnect.evaluation import CausalLMScoring, MaskedLMScoring

    if language.kind == "causal":
        return CausalLMScoring()
    mask = ckpt.directory.config.get("mask_token_id")
    if not isinstance(mask, int):
        mask = _tokenizer_mask(ckpt.directory.path)
    vocab = ckpt.directory.config.get("vocab_size")
    return MaskedLMScoring(mask_token_id=mask, vocab_size=vocab if isinstance(vocab, int) else None,
                           seed=seed)  # fmt: skip


def _tokenizer_mask(path: Path) -> int | None:
    """The mask token id of the directory's tokenizer, if it has one (BERT's config has none)."""
    from modeconnect.io.hf import load_tokenizer

    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json",
                                                     "vocab.txt")):  # fmt: skip
        return None
    mask = getattr(load_tokenizer(path), "mask_token_id", None)
    return mask if isinstance(mask, int) else None


def _language(ckpt: Checkpoint | None, block_size: int | None) -> LanguageData | None:
    """How a language model read from a directory takes token data; ``None`` for others."""
    directory = ckpt.directory if ckpt is not None else None
    kind = lm_kind(directory.architecture) if directory is not None else None
    if directory is None or kind is None:
        return None
    positions = _max_positions(directory.config)
    size = block_size if block_size is not None else min(BLOCK_SIZE, positions or BLOCK_SIZE)
    return LanguageData(kind, tokenizer=directory.path, block_size=size)


def _max_positions(config: Mapping[str, Any]) -> int | None:
    for key in _POSITIONS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class _Reader:
    """Loads ``--data`` / ``--train`` for the session's model and checks that they fit it."""

    model: nn.Module
    first: Checkpoint | None
    batch_size: int
    language: LanguageData | None

    def load(self, source: str | Path | None, class_labels: bool) -> Sequence[Batch] | None:
        if source is None:
            return None
        batches = load_data(source, batch_size=self.batch_size, language=self.language)
        directory = self.first.directory if self.first is not None else None
        if self.language is not None and directory is not None:
            vocab = directory.config.get("vocab_size")
            if isinstance(vocab, int):
                check_tokens(batches, source, vocab, _max_positions(directory.config))
            return batches  # type: ignore[return-value]
        weights = self.first.state_dict if self.first is not None and self.first.lazy else None
        check_fits(self.model, batches, str(source), class_labels=class_labels, weights=weights)
        return batches  # type: ignore[return-value]


def choose_probe(
    model: nn.Module,
    data: Sequence[Batch] | None,
    input_shape: Sequence[int] | None,
    input_dtype: torch.dtype | None,
) -> tuple[Tensor, ...]:
    """The probe batch: from ``input_shape``, else :func:`modeconnect.probe.probe_inputs`."""
    from modeconnect.spec import example_inputs

    if input_shape is not None:
        return example_inputs(model, input_shape, input_dtype)
    return probe_inputs(model, None, data)
