"""`Policy`: which CPU fast paths the library's kernels take, in one object.

Every speed switch of the TensorFlow kernels (Winograd and its thresholds,
per-tap convolutions, channel slices, the bfloat16 special cases, LDv2's
XLA-compiled slices) is a field here, read when a graph is traced. The
defaults come from the machine (`keras_gald.ops.machine()`): the fast paths
were measured to win with TensorFlow's oneDNN kernels, and some of them lose
on its Eigen kernels (AVX2-only CPUs, or `TF_ENABLE_ONEDNN_OPTS=0`): see
`benchmarks/README.md` ("Dispatch per machine") and the results files it names.

Nothing here is saved in a layer's config: a `.keras` file carries the maths,
and each machine traces it with its own policy.

Example:
    >>> import keras_gald as kg
    >>> kg.ops.Policy.current().winograd          # this machine's default
    >>> with kg.ops.Policy(winograd=False):       # traced without Winograd
    ...     logits = model.predict(images)
"""

import contextvars
import dataclasses
import functools
import typing

from keras_gald.ops.hardware import machine

try:  # Read while tf.function traces: AutoGraph must call these as plain Python.
    from tensorflow import autograph as _autograph

    _plain_python = _autograph.experimental.do_not_convert
except ImportError:  # pragma: no cover - TensorFlow is a dependency today
    def _plain_python(fn):
        return fn


def _machine_defaults(m):
    """The measured defaults for machine `m` (a `keras_gald.ops.Machine`)."""
    onednn = m.onednn
    return dict(
        # Per-tap matmuls where most taps of a "SAME" conv read padding: they skip
        # zeros exactly, whichever kernels run.
        taps=True,
        taps_max_fraction=0.8,
        # oneDNN's bf16 conv skips the padding taps itself; Eigen's does not.
        taps_direct_forward_bf16=onednn,
        tf_filter_grad_max_weights=128 * 128,
        # oneDNN's fp32 conv reaches less of the machine on very wide kernels.
        conv_slices=onednn,
        slice_min_channels=1024,
        channel_slice=512,
        # Winograd F(2x2, 3x3) from 256 x 256 weights per tap: measured to win
        # on oneDNN's matmuls. On Eigen's kernels its forward loses to the direct
        # conv and to the taps, and whole networks tie, so it stays off there.
        winograd=onednn,
        winograd_bf16=onednn and m.bf16_instructions,
        winograd_min_weights=256 * 256,
        winograd_min_weights_bf16=512 * 512,
        winograd_cost=1.3,
        winograd_cost_bf16=1.8,
        winograd_max_bytes=256 * 2**20,
        winograd_min_pixels=512,
        ldv2_fold=True,
        jit_slices=True,
    )


@dataclasses.dataclass(frozen=True)
class Policy:
    """The library's kernel choices; fields left `None` take this machine's default.

    Use it as a context manager around the code that traces graphs
    (`model.predict`, `fit`, `tf.function` tracing); `Policy.current()` is
    what the kernels read.

    Args:
        taps: compute large-rate "SAME" convs as one matmul per tap over the
            region where it reads the image, where at most `taps_max_fraction`
            of the dense work remains.
        taps_max_fraction: the share of the dense work below which the taps win.
        taps_direct_forward_bf16: bfloat16 convs on the taps path run their
            forward as one dilated conv (gradients stay per tap).
        tf_filter_grad_max_weights: rate-1 kernels with at most this many
            `C_in * C_out` weights per tap take TF's own kernel gradient.
        conv_slices: float32 convs with at least `slice_min_channels` input or
            output channels run over `channel_slice`-channel slices.
        slice_min_channels, channel_slice: see `conv_slices`.
        winograd: float32 3x3 "SAME" convs with at least `winograd_min_weights`
            weights per tap run by Winograd F(2x2, 3x3) where
            `winograd_cost * winograd_fraction` undercuts the other path.
        winograd_bf16: the same for bfloat16 (`winograd_min_weights_bf16`,
            `winograd_cost_bf16`).
        winograd_min_weights, winograd_min_weights_bf16, winograd_cost,
        winograd_cost_bf16: see `winograd`.
        winograd_max_bytes: above this many bytes of transformed input, direct.
        winograd_min_pixels: below this many output pixels, direct (each new
            shape costs an XLA compile of the transforms).
        ldv2_fold: LDv2 applies its output 1x1 conv before the neighbourhood
            sum, folded into the value projection.
        jit_slices: LDv2's shifted-slice primitives run as XLA-compiled calls in
            graphs (a layer's own `jit_slices=` argument overrides it).
    """

    taps: typing.Optional[bool] = None
    taps_max_fraction: typing.Optional[float] = None
    taps_direct_forward_bf16: typing.Optional[bool] = None
    tf_filter_grad_max_weights: typing.Optional[float] = None
    conv_slices: typing.Optional[bool] = None
    slice_min_channels: typing.Optional[int] = None
    channel_slice: typing.Optional[int] = None
    winograd: typing.Optional[bool] = None
    winograd_bf16: typing.Optional[bool] = None
    winograd_min_weights: typing.Optional[float] = None
    winograd_min_weights_bf16: typing.Optional[float] = None
    winograd_cost: typing.Optional[float] = None
    winograd_cost_bf16: typing.Optional[float] = None
    winograd_max_bytes: typing.Optional[float] = None
    winograd_min_pixels: typing.Optional[int] = None
    ldv2_fold: typing.Optional[bool] = None
    jit_slices: typing.Optional[bool] = None

    @_plain_python
    def __post_init__(self):
        defaults = _machine_defaults(machine())
        for field in dataclasses.fields(self):
            if getattr(self, field.name) is None:
                object.__setattr__(self, field.name, defaults[field.name])

    @staticmethod
    @_plain_python
    def current():
        """The innermost active `Policy`, else this machine's default one."""
        active = _CURRENT.get()
        return active if active is not None else _default()

    @_plain_python
    def replace(self, **changes):
        """A copy with `changes` applied (unknown names raise TypeError)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    def __enter__(self):
        _TOKENS.append(_CURRENT.set(self))
        return self

    def __exit__(self, *exc_info):
        _CURRENT.reset(_TOKENS.pop())
        return False


_CURRENT = contextvars.ContextVar("keras_gald_ops_policy", default=None)
_TOKENS = []


@functools.lru_cache(maxsize=None)
@_plain_python
def _default():
    return Policy()
