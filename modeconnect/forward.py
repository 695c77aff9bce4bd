"""Running a model: the one way modeconnect calls any model with any state dict.

Everything that runs a model — the equivalence guard, interpolation curves, BatchNorm
reset and REPAIR, layer-wise barriers, activation statistics, tracing — goes through
this module, so that a model is called the same way everywhere:

* :class:`ModelCall` says how to call a model on a batch's inputs and which of its
  outputs to read. Plain modules get ``model(*inputs)``. Hugging Face models get their
  main input by name, ``use_cache=False`` (a cache object is not an output to compare)
  and ``return_dict=True``, the same ids as ``decoder_input_ids`` when they are
  encoder-decoders, a second input as ``attention_mask`` (padded token batches, see
  :mod:`modeconnect.evaluation.scoring`), and their ``logits`` when they have them.
  :func:`model_call` chooses one for a model.
* :class:`Binding` maps a state dict onto the module's tensors, tied weights included.
* :func:`run` calls the model once with a state dict; :func:`over_batches` loops over
  batches with the state dict swapped in once (:func:`swapped`, what
  :func:`torch.func.functional_call` does), so once per pass, not once per batch.
* :func:`eval_mode` puts every submodule in eval mode and restores each one's flag.

The module's own tensors and training flags are never changed.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils._named_member_accessor import swap_tensor

from modeconnect.errors import ModeconnectError, ShapeMismatch, listed

__all__ = [
    "Binding",
    "ModelCall",
    "PLAIN",
    "batch_inputs",
    "computed_buffers",
    "eval_mode",
    "is_hugging_face",
    "lm_kind",
    "model_call",
    "output_tensors",
    "over_batches",
    "require_fit",
    "run",
    "share_layout",
    "swapped",
]

R = TypeVar("R")


# --------------------------------------------------------------------------- calling convention


@dataclass(frozen=True)
class ModelCall:
    """How to call a model on positional ``inputs`` and what of its output to keep.

    ``names``: keyword names for the inputs, in order (empty: pass them positionally).
    ``constants``: keyword arguments added to every call (``use_cache=False``).
    ``decoder_inputs``: also pass the first input as ``decoder_input_ids``.
    ``output``: the attribute (or key) of the output to keep (``"logits"``); ``None``
    keeps the whole output.
    ``attention_mask``: an input after the named ones is the ``attention_mask`` (1 at a
    token, 0 at padding); ``positions``: with it, also pass ``position_ids`` counted over
    the tokens (``cumsum − 1``, as ``generate`` does), so that a left-padded sequence
    sees the positions it has unpadded (learned absolute positions, GPT-2).
    """

    names: tuple[str, ...] = ()
    constants: Mapping[str, Any] = field(default_factory=dict)
    decoder_inputs: bool = False
    output: str | None = None
    attention_mask: bool = False
    positions: bool = False

    def arguments(self, inputs: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` for ``model(*args, **kwargs)`` (and for ``torch.export``)."""
        if not self.names:
            return tuple(inputs), dict(self.constants)
        kwargs = dict(zip(self.names, inputs))
        if self.decoder_inputs and inputs:
            kwargs["decoder_input_ids"] = inputs[0]
        if self.attention_mask and len(inputs) > len(self.names):
            mask = kwargs["attention_mask"] = inputs[len(self.names)]
            if self.positions:
                kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return (), {**kwargs, **self.constants}

    def select(self, out: Any) -> Any:
        """The part of a model's output that modeconnect compares and scores."""
        if self.output is None:
            return out
        if isinstance(out, Mapping) and self.output in out:
            return out[self.output]
        value = getattr(out, self.output, None)
        return out if value is None else value

    def __call__(self, model: nn.Module, inputs: Sequence[Any]) -> Any:
        args, kwargs = self.arguments(inputs)
        return self.select(model(*args, **kwargs))


PLAIN = ModelCall()
"""``model(*inputs)``, the whole output."""


def is_hugging_face(model: nn.Module) -> bool:
    """A ``transformers`` ``PreTrainedModel`` (checked without importing transformers)."""
    transformers = sys.modules.get("transformers")
    base = getattr(transformers, "PreTrainedModel", None) if transformers is not None else None
    return isinstance(base, type) and isinstance(model, base)


def model_call(model: nn.Module) -> ModelCall:
    """The calling convention for ``model``: :data:`PLAIN`, or the Hugging Face one."""
    if not is_hugging_face(model):
        return PLAIN
    accepted = inspect.signature(model.forward).parameters
    constants = {k: v for k, v in (("use_cache", False), ("return_dict", True)) if k in accepted}
    config = getattr(model, "config", None)
    main = str(getattr(model, "main_input_name", "input_ids"))
    decoder = bool(getattr(config, "is_encoder_decoder", False)) and "decoder_input_ids" in accepted
    output = "logits" if _has_logits(model) else None
    masked = "attention_mask" in accepted
    causal = lm_kind(type(model).__name__) == "causal" and not decoder
    return ModelCall((main,), constants, decoder_inputs=decoder and main == "input_ids",
                     output=output, attention_mask=masked,
                     positions=masked and causal and "position_ids" in accepted)  # fmt: skip


def _has_logits(model: nn.Module) -> bool:
    # Task models (…ForCausalLM, …ForMaskedLM, …ForSequenceClassification) return logits;
    # base models (BertModel) return hidden states, which are compared whole.
    name = type(model).__name__
    return "For" in name or name.endswith(("LMHeadModel", "Classification"))


def batch_inputs(batch: Any) -> tuple[Any, ...]:
    """The model inputs of a batch: ``x`` of ``(x, y)``, as a tuple (``x`` may be a tuple)."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def output_tensors(out: Any) -> list[Tensor]:
    """The floating-point tensors of an output, in pytree order (what the guard compares)."""
    leaves = torch.utils._pytree.tree_leaves(out)
    return [t for t in leaves if isinstance(t, Tensor) and t.is_floating_point()]


# --------------------------------------------------------------------------- state dicts


@dataclass(frozen=True)
class Binding:
    """How a state dict maps onto a module's parameters and buffers.

    ``groups`` lists, for each distinct tensor of the module, all names it goes by
    (several when weights are tied); ``required`` marks the groups that the module's
    own ``state_dict()`` saves (parameters and persistent buffers).
    """

    groups: tuple[tuple[str, ...], ...]
    required: tuple[bool, ...]
    known: frozenset[str]

    @staticmethod
    def of(model: nn.Module) -> Binding:
        by_tensor: dict[int, list[str]] = {}
        named: list[tuple[str, Tensor]] = [*model.named_parameters(remove_duplicate=False)]
        named += model.named_buffers(remove_duplicate=False)
        for name, tensor in named:
            by_tensor.setdefault(id(tensor), []).append(name)
        saved = set(model.state_dict(keep_vars=True))
        groups = tuple(tuple(names) for names in by_tensor.values())
        required = tuple(any(n in saved for n in names) for names in groups)
        return Binding(groups, required, frozenset(n for n, _ in named))

    def check(self, state_dict: Mapping[str, Tensor]) -> None:
        """Raise unless ``state_dict`` gives every tensor of the module and nothing else."""
        pairs = zip(self.groups, self.required, strict=True)
        missing = [g[0] for g, req in pairs if req and _first(g, state_dict) is None]
        unexpected = sorted(set(state_dict) - self.known)
        if missing or unexpected:
            raise ModeconnectError(
                f"state dict: does not fit the model (missing {listed(sorted(missing))}, "
                f"unexpected {listed(unexpected)}); load it into the same architecture"
            )

    def bind(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Name every tensor of the module, filling tied aliases from the name given."""
        bound: dict[str, Tensor] = {}
        for names in self.groups:
            value = _first(names, state_dict)
            if value is not None:
                bound.update({n: state_dict.get(n, value) for n in names})
        return bound

    def checked(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`check`, then :meth:`bind`."""
        self.check(state_dict)
        return self.bind(state_dict)


def require_fit(model: nn.Module, state_dict: Mapping[str, Tensor], label: str) -> None:
    """Raise one line naming ``label`` unless ``state_dict`` fits ``model``: every tensor the
    module holds (tied aliases may be left out) and nothing else (:meth:`Binding.check`)
    and, for a dict in memory, each tensor in the module's shape and floating ones in its
    dtype. A lazy mapping is not read here: its tensors are checked as they are loaded.

    >>> import torch
    >>> model = torch.nn.Linear(2, 3)
    >>> require_fit(model, {k: v.double() for k, v in model.state_dict().items()}, "B")
    Traceback (most recent call last):
    ...
    modeconnect.errors.ShapeMismatch: B: tensor 'weight' (3, 2) has dtype torch.float64 but \
the model's is torch.float32; cast the state dict to the model's dtype (or the model to its)
    """
    try:
        Binding.of(model).check(state_dict)
    except ModeconnectError as exc:
        raise ShapeMismatch(f"{label}: {exc}".replace(": state dict:", ":")) from None
    if not isinstance(state_dict, dict):
        return
    own = {**dict(model.named_parameters(remove_duplicate=False)),
           **dict(model.named_buffers(remove_duplicate=False))}  # fmt: skip
    for key, t in state_dict.items():
        mine = own.get(key)
        if mine is None or not isinstance(t, Tensor):
            continue
        if t.shape != mine.shape:
            raise ShapeMismatch(
                f"{label}: tensor {key!r} has shape {tuple(t.shape)} but the model's is "
                f"{tuple(mine.shape)}; load it into the same architecture"
            )
        if t.is_floating_point() and mine.is_floating_point() and t.dtype != mine.dtype:
            raise ShapeMismatch(
                f"{label}: tensor {key!r} {tuple(t.shape)} has dtype {t.dtype} but the model's "
                f"is {mine.dtype}; cast the state dict to the model's dtype (or the model to its)"
            )


def _first(names: Sequence[str], state_dict: Mapping[str, Tensor]) -> Tensor | None:
    return next((state_dict[n] for n in names if n in state_dict), None)


# --------------------------------------------------------------------------- running


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def run(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    inputs: Sequence[Any],
    *,
    call: ModelCall | None = None,
) -> Any:
    """The model's (selected) output on ``inputs`` with the weights ``state_dict``.

    The state dict must name every tensor the module holds (tied aliases may be left
    out); the caller chooses the mode (:func:`eval_mode`) and gradients.
    """
    bound = Binding.of(model).checked(state_dict)
    how = call if call is not None else model_call(model)
    with swapped(model, bound):
        return how(model, tuple(inputs))


def over_batches(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    batches: Iterable[Any],
    step: Callable[[Any, Any], R],
    *,
    call: ModelCall | None = None,
    bound: bool = False,
    cut: type[Exception] | None = None,
) -> list[R]:
    """``[step(output, batch) for batch in batches]`` with the weights ``state_dict``.

    One swap around the whole loop (:func:`swapped`) puts the weights in once (a swap
    costs microseconds per tensor, i.e. ~1 ms per batch for a 150-tensor ResNet if it
    were done per batch). ``step`` may raise to stop the loop. ``cut`` is an exception a forward
    hook may raise to end one batch's forward early (once the layer it watches has
    run); ``step`` then gets ``None`` as the output. With ``bound=True``,
    ``state_dict`` is already :meth:`Binding.bind`-ed and is used as is.
    """
    params = state_dict if bound else Binding.of(model).checked(state_dict)
    params = channels_last(model, params)  # a new dict
    how = call if call is not None else model_call(model)
    with swapped(model, params):
        return [step(_output(model, how, batch, cut), batch) for batch in batches]


def _output(model: nn.Module, how: ModelCall, batch: Any, cut: type[Exception] | None) -> Any:
    if cut is None:
        return how(model, batch_inputs(batch))
    try:
        return how(model, batch_inputs(batch))
    except cut:
        return None


@contextlib.contextmanager
def swapped(model: nn.Module, params: Mapping[str, Tensor]) -> Iterator[None]:
    """``model`` holding ``params`` (by name) for the block, then its own tensors again.

    What :func:`torch.func.functional_call` does with ``tie_weights=False`` (the same
    ``swap_tensor`` per name, restored in a ``finally``), without its per-call
    overhead: each owning module is looked up once per call, and no wrapper module is
    built (measured ~25 µs less per pass of an 8-tensor MLP: 9 % of a pass over 8
    examples, under 1 % over 500).

    >>> lin = nn.Linear(2, 1)
    >>> with swapped(lin, {"weight": torch.ones(1, 2), "bias": torch.zeros(1)}):
    ...     lin(torch.tensor([[1.0, 2.0]])).item()
    3.0
    >>> lin.weight is dict(lin.named_parameters())["weight"]
    True
    """
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        raise RuntimeError("The stateless API can't be used with Jitted modules")
    saved: list[tuple[nn.Module, str, Any]] = []
    owners: dict[str, nn.Module] = {}
    try:
        for name, tensor in params.items():
            path, _, leaf = name.rpartition(".")
            owner = owners.get(path)
            if owner is None:
                owner = owners[path] = model.get_submodule(path)
            saved.append((owner, leaf, swap_tensor(owner, leaf, tensor, allow_missing=True)))
        yield
    finally:
        for owner, leaf, tensor in reversed(saved):
            swap_tensor(owner, leaf, tensor, allow_missing=True)


def channels_last(model: nn.Module, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``params`` with the weights of ``model``'s ``nn.Conv2d`` layers in channels-last layout.

    oneDNN then runs every convolution, and the activations between them, channels-last:
    on a 2-core CPU a 32-64 ``conv_net`` at 28x28 runs its evaluation passes 1.3-1.6x
    faster, with the same values to float rounding. Only where the layout cannot matter:

    * models built of ``torch.nn`` modules and modeconnect's own
      (:mod:`modeconnect.models`), whose forwards never ``view`` an activation (a custom
      ``x.view(n, -1)`` after a convolution would fail on a channels-last tensor);
    * no BatchNorm in training mode (a BatchNorm reset): the channels-last batch-norm
      kernel sums its batch statistics less accurately (measured 1e-6 against 2e-8);
    * never inside :func:`torch.func.vmap`, which cannot query the layout.

    Elsewhere ``params`` come back as they are.

    >>> conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    >>> out = channels_last(conv, dict(conv.named_parameters()))
    >>> out["0.weight"].is_contiguous(memory_format=torch.channels_last)
    True
    """
    names, norms = _layout(model)
    if not names or any(m.training for m in norms) or any(map(_batched, params.values())):
        return dict(params)
    last = torch.channels_last
    return {k: v.clone(memory_format=last) if k in names and v.ndim == 4 else v
            for k, v in params.items()}  # fmt: skip


_LAYOUT: weakref.WeakKeyDictionary[nn.Module, tuple[frozenset[str], tuple[nn.Module, ...]]] = (
    weakref.WeakKeyDictionary()
)
"""Per model: its ``nn.Conv2d`` weights' names where the layout cannot matter (else none),
and its BatchNorm modules."""
_LAYOUT_FREE = ("torch.nn.modules.", "modeconnect.models")
"""Modules whose forwards are independent of the activations' memory layout."""


def _layout(model: nn.Module) -> tuple[frozenset[str], tuple[nn.Module, ...]]:
    known = _LAYOUT.get(model)
    if known is None:
        modules = list(model.named_modules())
        free = all(type(m).__module__.startswith(_LAYOUT_FREE) for _, m in modules)
        convs = [f"{n}.weight" if n else "weight" for n, m in modules if type(m) is nn.Conv2d]
        norms = tuple(m for _, m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm))
        known = _LAYOUT[model] = (frozenset(convs if free else ()), norms)
    return known


def share_layout(derived: nn.Module, original: nn.Module) -> None:
    """Let ``derived``, a module running ``original``'s computation (a traced and folded
    copy, :mod:`modeconnect.evaluation.folding`), take channels-last weights where
    ``original`` may: its own ``nn.Conv2d`` weights, if ``original``'s layout cannot matter."""
    free = all(type(m).__module__.startswith(_LAYOUT_FREE) for m in original.modules())
    modules = list(derived.named_modules())
    convs = [f"{n}.weight" if n else "weight" for n, m in modules if type(m) is nn.Conv2d]
    norms = tuple(m for _, m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm))
    _LAYOUT[derived] = (frozenset(convs if free else ()), norms)


def _batched(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a :func:`torch.func.vmap` batched tensor."""
    return bool(torch._C._functorch.is_batchedtensor(tensor))


def computed_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Buffers the model computes itself and never saves (rotary frequencies, position ids)."""
    saved = set(model.state_dict(keep_vars=True))
    return {n: b for n, b in model.named_buffers(remove_duplicate=False) if n not in saved}


def lm_kind(architecture: str) -> str | None:
    """``"causal"`` or ``"masked"`` for a language-model head class name, else ``None``."""
    if architecture.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal"
    if architecture.endswith("ForMaskedLM"):
        return "masked"
    return None
