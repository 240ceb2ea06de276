"""The library pieces behind the CLI behaviour, usable on their own: the non-finite guard
in a plain `model.fit`, checkpoint fallback, atomic writes, checked model loading."""

import numpy as np
import pytest


def _fit_data():
    x = np.ones((8, 4), np.float32)
    y = np.ones((8, 1), np.float32)
    return x, y


def test_stop_on_non_finite_in_plain_fit_raises_with_the_step():
    import keras

    from keras_gald.callbacks import NonFiniteTrainingError, StopOnNonFinite

    x, y = _fit_data()
    y[4:] = np.inf  # batch 3 (batch_size 2) has an infinite target -> non-finite loss
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    seen = []

    class Recorder(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    with pytest.raises(NonFiniteTrainingError, match="non-finite loss .* at step 3") as info:
        model.fit(x, y, batch_size=2, epochs=3, shuffle=False, verbose=0,
                  callbacks=[StopOnNonFinite(raise_error=True, verbose=False), Recorder()])
    assert info.value.step == 3
    assert seen == [0, 1]  # raised before later callbacks saw the bad batch


def test_stop_on_non_finite_flag_mode_stops_fit_and_checks_weights():
    import keras

    from keras_gald.callbacks import StopOnNonFinite, all_finite

    x, y = _fit_data()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    guard = StopOnNonFinite(verbose=False)
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[guard])
    assert not guard.tripped and all_finite(model)
    kernel = model.layers[0].kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    history = model.fit(x, y, batch_size=2, epochs=5, verbose=0, callbacks=[guard])
    assert guard.tripped and "non-finite" in guard.reason
    assert len(history.history["loss"]) == 1  # stopped in the first epoch


def test_restore_newest_readable_skips_truncated_index(tmp_path):
    import tensorflow as tf

    from keras_gald.checkpoints import CheckpointUnreadableError, restore_newest_readable

    var = tf.Variable([1.0, 2.0])
    ckpt = tf.train.Checkpoint(v=var)
    manager = tf.train.CheckpointManager(ckpt, str(tmp_path), max_to_keep=3,
                                         checkpoint_name="ckpt")
    manager.save(checkpoint_number=1)
    var.assign([3.0, 4.0])
    manager.save(checkpoint_number=2)
    index = tmp_path / "ckpt-2.index"
    index.write_bytes(index.read_bytes()[:10])
    var.assign([0.0, 0.0])
    path, skipped = restore_newest_readable(ckpt, tmp_path)
    assert path.endswith("ckpt-1") and var.numpy().tolist() == [1.0, 2.0]
    assert len(skipped) == 1 and skipped[0][0].endswith("ckpt-2")
    (tmp_path / "ckpt-1.index").write_bytes(b"")
    with pytest.raises(CheckpointUnreadableError, match="ckpt-1.*|ckpt-2.*"):
        restore_newest_readable(ckpt, tmp_path)


def test_atomic_write_failure_leaves_old_file(tmp_path):
    from keras_gald import io

    target = tmp_path / "metrics.json"
    io.atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text().strip() == '{\n  "a": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_load_model_names_the_problem(tmp_path):
    from keras_gald import io

    with pytest.raises(io.ModelFileError, match="does not exist"):
        io.load_model(tmp_path / "none.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(io.ModelFileError, match="bad.keras is not a .keras archive"):
        io.load_model(bad)
