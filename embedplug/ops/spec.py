"""The declaration of one op: what an op module writes, and all that the generic layer reads.

An op is its schema in ``csrc/embedplug.cpp``, its kernels, its pure-torch reference and one
:class:`OpSpec`. From the spec, :mod:`embedplug.ops.layer` registers the fake kernel and autograd
(only when ``embedplug._C`` loaded), checks every input at the op's boundary with one message per
cause, runs the fused kernel or the reference, and reports which one runs; the conformance table
(``tests/ops/test_conformance.py``) builds its cases from the spec, so no op skips it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from embedplug._validation import check_embeddings
from embedplug.distances import canonical_distance


class Arg:
    """One argument of an op's public signature; ``check`` returns the value the kernel takes."""

    optional = False

    def __init__(self, name: str) -> None:
        self.name = name

    def check(self, value: Any, caller: str) -> Any:  # pragma: no cover - every kind overrides it
        raise NotImplementedError


class Embeddings(Arg):
    """A floating [rows, D] tensor with rows >= 1 and D >= 1; ``same_rows_as`` / ``same_dim_as`` tie
    its shape to an earlier argument's. float16/bfloat16 are computed in float32."""

    def __init__(self, name: str, *, same_rows_as: str | None = None, same_dim_as: str | None = None,
                 optional: bool = False, differentiable: bool = True) -> None:
        super().__init__(name)
        self.same_rows_as, self.same_dim_as = same_rows_as, same_dim_as
        self.optional, self.differentiable = optional, differentiable

    def check(self, value, caller):
        if value is None and self.optional:
            return None
        check_embeddings(value, caller, self.name)
        return value


class Labels(Arg):
    """Integer class ids, one per row of ``rows_of``: returned as a flat int64 [N] tensor."""

    def __init__(self, name: str = "labels", *, rows_of: str = "embeddings") -> None:
        super().__init__(name)
        self.rows_of = rows_of

    def check(self, value, caller):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{caller}: {self.name} must be a torch.Tensor of integer class ids, got {type(value).__name__}")
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{caller}: {self.name} must be an integer tensor of class ids, got {value.dtype}")
        if value.dim() != 1:
            raise ValueError(f"{caller}: {self.name} must be 1-D [N], got shape {tuple(value.shape)}")
        return value.to(torch.int64)


class Real(Arg):
    """A real number (a bool is not): ``positive`` (> 0), ``non_negative`` (>= 0), always finite;
    ``optional`` admits None."""

    def __init__(self, name: str, *, positive: bool = False, non_negative: bool = False, optional: bool = False) -> None:
        super().__init__(name)
        self.positive, self.non_negative, self.optional = positive, non_negative, optional

    def check(self, value, caller):
        if value is None and self.optional:
            return None
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{caller}: {self.name} must be a real number, got {value!r} ({type(value).__name__})")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{caller}: {self.name} must be a finite number, got {number}")
        if self.positive and not number > 0:
            raise ValueError(f"{caller}: {self.name} must be > 0, got {number}")
        if self.non_negative and not number >= 0:
            raise ValueError(f"{caller}: {self.name} must be >= 0, got {number}")
        return number


class Flag(Arg):
    """A bool."""

    def check(self, value, caller):
        if not isinstance(value, (bool, int)) or isinstance(value, float):
            raise TypeError(f"{caller}: {self.name} must be a bool, got {value!r}")
        return bool(value)


class Count(Arg):
    """An integer >= ``minimum`` (default 0); ``optional`` admits None."""

    def __init__(self, name: str, *, minimum: int = 0, optional: bool = False) -> None:
        super().__init__(name)
        self.minimum, self.optional = minimum, optional

    def check(self, value, caller):
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < self.minimum:
            raise ValueError(f"{caller}: {self.name} must be an integer >= {self.minimum}, got {value!r}")
        return int(value)


class IndexMatrix(Arg):
    """Integer corpus indices per row, ``[rows, width]`` (width may be 0), -1 as padding: returned as
    int64. Only dtype and rank are checked here (no data is read, so the meta device and tracing
    work); the row count and the index range are the op's ``validate`` and kernel's."""

    def check(self, value, caller):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{caller}: {self.name} must be a torch.Tensor of corpus indices, got {type(value).__name__}")
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{caller}: {self.name} must be an integer tensor of corpus indices, got {value.dtype}")
        if value.dim() != 2:
            raise ValueError(f"{caller}: {self.name} must be 2-D [rows, width] (-1 as padding), got shape {tuple(value.shape)}")
        return value.to(torch.int64)


class Scores(Arg):
    """A floating 2-D tensor of given scores (width may be 0); the kernel and reference compute in the
    embeddings' dtype."""

    def check(self, value, caller):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{caller}: {self.name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{caller}: {self.name} must be a floating-point tensor, got {value.dtype}")
        if value.dim() != 2:
            raise ValueError(f"{caller}: {self.name} must be 2-D, got shape {tuple(value.shape)}")
        return value.detach()


class Choice(Arg):
    """One of ``choices`` (strings); ``aliases`` maps accepted spellings to a choice."""

    def __init__(self, name: str, choices: tuple[str, ...], *, aliases: dict | None = None) -> None:
        super().__init__(name)
        self.choices, self.aliases = choices, dict(aliases or {})

    def check(self, value, caller):
        value = self.aliases.get(value, value)
        if value not in self.choices:
            raise ValueError(f"{caller}: {self.name} must be one of {list(self.choices)}, got {value!r}")
        return value


class Distance(Arg):
    """A distance name, canonicalised ("euclidean", "squared_euclidean", "cosine")."""

    def check(self, value, caller):
        try:
            return canonical_distance(value)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{caller}: {self.name}: {error}") from None


@dataclass(frozen=True)
class Autograd:
    """How the forward op is differentiated: ``setup_context`` / ``backward`` as
    ``torch.library.register_autograd`` takes them, and the underscored backward op's schema name and
    fake kernel. ``double_backward``: "supported" (``backward`` builds a differentiable graph) or
    "unsupported" (the layer raises a clear error naming the op under ``create_graph=True``)."""

    setup_context: Callable
    backward: Callable
    backward_op: str | None = None
    backward_fake: Callable | None = None
    double_backward: str = "unsupported"


@dataclass(frozen=True)
class Sample:
    """One conformance case: the public arguments, the regime it stresses, and whether its float32
    value is continuous enough to compare with the float64 reference (selections that flip on a
    rounding, e.g. semi-hard's "strictly above", are not)."""

    args: tuple
    regime: str
    float32_matches_float64: bool = True
    # Euclidean distances of (near-)duplicate rows are square roots of a rounding: sqrt(eps) * |x|
    # apart between two correct GEMMs, in float64 too.
    float64_atol: float = 1e-10
    float32_atol: float = 2e-4
    # False where the gradient holds a factor detached (a stop-gradient hardness term), so it is not
    # the numerical derivative gradcheck measures.
    gradcheck: bool = True


@dataclass(frozen=True)
class OpSpec:
    """Everything about one op that is not its kernel.

    Attributes:
        name: the forward op's schema name (``embedplug::name``).
        args: the public arguments, in schema order, without ``compute_grad``.
        reference: pure torch, ``reference(*checked_args) -> outputs`` (the public outputs).
        fake: the forward op's fake kernel, on the schema's arguments.
        outputs: how many of the schema's outputs are public (the rest are saved for backward).
        autograd: how it is differentiated (None: not differentiable, inputs are detached).
        compute_grad_at: index in the schema's arguments of a ``compute_grad`` flag the layer sets
            when a differentiable input requires grad (the kernel then computes the gradient in
            the forward pass), or None.
        reduce: the scalar the public loss takes of ``(inputs, outputs)``; the functional forms
            call it, and the conformance table compares it across dtypes.
        samples: ``samples(dtype) -> Iterable[Sample]`` for the conformance table.
        fused_devices: device types with a kernel in the extension, when it has them.
        validate: extra checks across arguments, ``validate(args, caller)``.
        gradcheck: False where the peer's gradient deliberately holds some factors constant (it is
            then not the numerical derivative; the fused gradient still equals the reference's).
        reference_when: ``reference_when(args, outputs) -> bool`` on the checked arguments and the
            kernel's whole output tuple: the kernel met an input it does not compute as its peer
            does (it says so in an output past the public ones), and the layer runs the reference
            instead. None: never.
    """

    name: str
    args: tuple[Arg, ...]
    reference: Callable[..., Any]
    fake: Callable[..., Any]
    outputs: int
    samples: Callable[[torch.dtype], Iterable[Sample]]
    autograd: Autograd | None = None
    compute_grad_at: int | None = None
    reduce: Callable[[tuple, tuple], torch.Tensor] | None = None
    fused_devices: tuple[str, ...] = ("cpu", "cuda")
    validate: Callable[[tuple, str], None] | None = None
    gradcheck: bool = True
    reference_when: Callable[[tuple, tuple], bool] | None = None

    @property
    def caller(self) -> str:
        return f"embedplug.ops.{self.name}"
