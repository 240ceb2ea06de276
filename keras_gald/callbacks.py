"""Keras callbacks that keep a training run from silently going bad.

`StopOnNonFinite` watches every batch's loss (and, at each epoch end and
every `check_weights_every` batches, the model's weights) and stops training
at the first non-finite value. Unlike `keras.callbacks.TerminateOnNaN` it
records *where* it stopped (`failed_step`, `reason`), checks the weights as
well (a huge learning rate can overflow weights while the logged loss still
looks finite), and can raise instead of merely stopping, so a script that
saves the model after `fit` cannot save a broken one by accident.

Put it *first* in the callback list: Keras calls callbacks in order, so the
ones after it (checkpointing, CSV logging) can ask `guard.tripped` and skip
saving a non-finite state.

Example:
    >>> guard = StopOnNonFinite(raise_error=True)
    >>> try:
    ...     model.fit(ds, epochs=10, callbacks=[guard, keras.callbacks.ModelCheckpoint(...)])
    ... except NonFiniteTrainingError as err:
    ...     print(err)   # "non-finite loss (nan) at step 5"
"""

import math

import keras
import numpy as np

__all__ = ["NonFiniteTrainingError", "StopOnNonFinite", "all_finite", "first_non_finite"]


class NonFiniteTrainingError(RuntimeError):
    """Training produced a non-finite loss or non-finite weights.

    Attributes:
        step: the optimizer step (1-based: the number of updates applied) at which
            the non-finite value was seen.
        reason: a short description, e.g. `"non-finite loss (nan)"`.
    """

    def __init__(self, step, reason):
        self.step = int(step)
        self.reason = reason
        super().__init__(f"{reason} at step {self.step}")


def first_non_finite(variables):
    """The path (or name) of the first variable holding NaN / Inf, else `None`."""
    for v in variables:
        value = keras.ops.convert_to_numpy(v)
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            return getattr(v, "path", None) or getattr(v, "name", "?")
    return None


def all_finite(model):
    """True when every floating-point weight of `model` is finite."""
    return first_non_finite(model.weights) is None


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training at the first non-finite loss or weight.

    Args:
        monitor: log keys to check after every batch (default `("loss",)`; every
            key present that ends in `"loss"` is checked when `None`).
        check_weights_every: also scan the weights every N batches (0: only at
            epoch ends). The scan costs one device-to-host copy of the weights.
        raise_error: raise `NonFiniteTrainingError` from `fit` instead of only
            setting `model.stop_training` (the default keeps `fit`'s return
            value; check `tripped` afterwards).
        verbose: print one line when it trips.

    Attributes:
        tripped: `True` once a non-finite value was seen.
        failed_step: optimizer step of that batch (or `None`).
        reason: what was non-finite (or `None`).
    """

    def __init__(self, monitor=("loss",), check_weights_every=0, raise_error=False, verbose=True):
        super().__init__()
        self.monitor = tuple(monitor) if monitor is not None else None
        self.check_weights_every = int(check_weights_every)
        self.raise_error = bool(raise_error)
        self.verbose = verbose
        self.tripped = False
        self.failed_step = None
        self.reason = None
        self._batches = 0

    def _step(self):
        opt = getattr(self.model, "optimizer", None)
        if opt is not None and getattr(opt, "iterations", None) is not None:
            return int(keras.ops.convert_to_numpy(opt.iterations))
        return self._batches

    def _trip(self, reason):
        self.tripped = True
        self.failed_step = self._step()
        self.reason = reason
        self.model.stop_training = True
        if self.verbose:
            print(f"\nStopOnNonFinite: {reason} at step {self.failed_step}; training stopped")
        if self.raise_error:
            raise NonFiniteTrainingError(self.failed_step, reason)

    def _check_weights(self):
        bad = first_non_finite(self.model.weights)
        if bad is not None:
            self._trip(f"non-finite weights ({bad})")

    def on_train_batch_end(self, batch, logs=None):
        if self.tripped:
            return
        self._batches += 1
        for key, value in (logs or {}).items():
            if self.monitor is None and not key.endswith("loss"):
                continue
            if self.monitor is not None and key not in self.monitor:
                continue
            try:
                number = float(keras.ops.convert_to_numpy(value))
            except (TypeError, ValueError):
                continue
            if not math.isfinite(number):
                self._trip(f"non-finite {key} ({number})")
                return
        if self.check_weights_every and self._batches % self.check_weights_every == 0:
            self._check_weights()

    def on_epoch_end(self, epoch, logs=None):
        if not self.tripped:
            self._check_weights()
