"""Tests for `training.train` (keras-gald train): configs, schedule, runs, resume, strategies.

Training runs happen in subprocesses (logical CPU devices and tf.distribute clusters
must be configured before TensorFlow initialises). Models are `resnet_tiny` on
48x64 synthetic scenes so each run takes seconds.
"""

import dataclasses
import json
import pathlib
import socket
import subprocess

import pytest

from tests.harness import max_relative_diff, run_python, start_python
from training import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[2]

TINY = [
    "--set", "backbone=resnet_tiny", "--set", "head_channels=16", "--set", "aspp_filters=8",
    "--set", "synthetic_size=48,64", "--crop", "48,64", "--set", "scale_range=none",
    "--set", "synthetic_train_images=16", "--set", "synthetic_val_images=2",
    "--batch-size", "4", "--set", "dropout=0", "--set", "lr=0.05", "--set", "cache=true",
]


def run_train(args, timeout=150):
    """`keras-gald train ARGS` in a fresh Python -> its stdout (asserts exit code 0)."""
    return run_python(["-m", "training.train", *args], timeout=timeout).stdout


def fingerprint(stdout):
    lines = [l for l in stdout.splitlines() if l.startswith("weights fingerprint:")]
    assert lines, stdout[-2000:]
    return lines[-1].split()[2]


def load_weights(path):
    import keras

    import keras_gald  # noqa: F401  (registers the custom objects)

    return keras.models.load_model(path, compile=False).get_weights()


def load_weights_h5(path):
    """Weights of a run's `.weights.h5` file, in model order (via a fresh model of the
    run's `config.json`, in float64 so that both float32 and float64 runs load exactly)."""
    import h5py  # noqa: F401  (keras dependency)
    import keras

    from training import train as train_lib

    keras.config.set_floatx("float64")
    try:
        cfg = config_lib.TrainConfig.from_json((path.parent / "config.json").read_text())
        model = train_lib.build_model(cfg, 9, sync_bn=False)
        model.load_weights(path)
        return model.get_weights()
    finally:
        keras.config.set_floatx("float32")




# ----------------------------------------------------------------- config


def test_presets_resolve_and_roundtrip_json():
    for name in config_lib.preset_names():
        cfg = config_lib.get_preset(name)
        assert cfg.name == name
        assert json.loads(cfg.to_json())["name"] == name
    city = config_lib.get_preset("cityscapes")
    assert (city.crop_size, city.batch_size, city.lr, city.steps) == ((832, 832), 8, 0.01, 50000)
    assert (city.loss, city.ohem_thresh, city.ohem_min_kept) == ("ohem", 0.7, 100000)
    assert (city.momentum, city.weight_decay, city.aux_loss_weight) == (0.9, 5e-4, 0.4)
    assert (city.backbone, city.ga, city.ld, city.sync_bn) == ("resnet101", "aspp", "v2", None)


def test_overrides_are_typed():
    cfg = config_lib.resolve_config("default", {
        "steps": "20", "crop_size": "64,96", "lr": "0.1", "flip": "false",
        "scale_range": "none", "ga": "none", "multi_grid": "1,2",
    })
    assert cfg.steps == 20 and cfg.crop_size == (64, 96) and cfg.lr == 0.1
    assert cfg.flip is False and cfg.scale_range is None and cfg.ga is None
    assert cfg.multi_grid == (1, 2)


def test_cli_flags_override(tmp_path):
    from training.train import build_parser, config_from_args

    args = build_parser().parse_args([
        "--config", "camvid", "--data-dir", str(tmp_path), "--steps", "7", "--crop", "64",
        "--no-xla", "--batch-size", "2", "--set", "loss=ohem", "--run-dir", str(tmp_path / "r"),
    ])
    cfg = config_from_args(args)
    assert (cfg.steps, cfg.crop_size, cfg.xla, cfg.batch_size, cfg.loss) == (
        7, (64, 64), False, 2, "ohem")
    assert cfg.data_dir == str(tmp_path)


def test_unknown_key_and_bad_values_raise():
    with pytest.raises(KeyError, match="unknown config key 'stepz'"):
        config_lib.resolve_config("default", {"stepz": "3"})
    with pytest.raises(KeyError, match="unknown config"):
        config_lib.get_preset("nope")
    with pytest.raises(ValueError):
        config_lib.resolve_config("default", {"flip": "maybe"})
    with pytest.raises(ValueError, match="data-dir"):
        config_lib.validate(config_lib.get_preset("camvid"))
    with pytest.raises(ValueError, match="eval_every"):
        config_lib.validate(config_lib.resolve_config(
            "default", {"eval_every": "7", "checkpoint_every": "5"}))


def test_dataclass_defaults_are_the_default_preset():
    assert config_lib.TrainConfig() == config_lib.get_preset("default")
    # Presets are copies: changing one leaves the table alone.
    config_lib.get_preset("camvid").crop_size = (1, 1)
    assert config_lib.get_preset("camvid").crop_size == (360, 480)


def test_xla_and_sync_bn_are_optional_booleans():
    from training import errors
    from training.train import build_parser, config_from_args

    cfg = config_lib.resolve_config("default", {"xla": "auto", "sync_bn": "true"})
    assert (cfg.xla, cfg.sync_bn) == (None, True)
    for flags, want in ((["--set", "xla=auto"], None), (["--xla"], True), (["--no-xla"], False),
                        ([], None)):
        assert config_from_args(build_parser().parse_args(flags)).xla is want
    with pytest.raises(errors.UserError, match="xla=maybe: expected auto, true or false"):
        config_from_args(build_parser().parse_args(["--set", "xla=maybe"]))


def test_config_json_of_the_string_tri_states_still_loads(tmp_path):
    from training import run_setup

    current = config_lib.resolve_config("default", {"sync_bn": "false", "run_dir": str(tmp_path)})
    old = json.loads(current.to_json())
    old.update(xla="auto", sync_bn="false")  # as written before they became Optional[bool]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    loaded = config_lib.TrainConfig.from_file(path)
    assert loaded == current and (loaded.xla, loaded.sync_bn) == (None, False)
    assert config_lib.TrainConfig.from_json(json.dumps(dict(old, xla="true"))).xla is True
    # Resuming such a run is not refused, and its config.json is not set aside as changed.
    assert config_lib.resume_conflicts(loaded, current) == []
    assert not run_setup.config_changed(path, current)
    assert run_setup.config_changed(path, dataclasses.replace(current, sync_bn=True))


def test_ldv2_window_settings_reach_the_model():
    """`--set ldv2_kernel_size / ldv2_dilation_rate` shape the model's LDv2 window (each
    alone too); a config.json from before they existed loads with the layer's defaults
    (k 5, r 3), and resuming with another window is refused as a model change."""
    from keras_gald.layers import LDv2
    from training.train import build_model

    def window(cfg):
        model = build_model(cfg, num_classes=4, sync_bn=False)
        (layer,) = [l for l in model._flatten_layers() if isinstance(l, LDv2)]
        return layer.kernel_size, layer.dilation_rate

    cfg = config_lib.resolve_config("default", {
        "backbone": "resnet_tiny", "ldv2_kernel_size": "3", "ldv2_dilation_rate": "2"})
    assert window(cfg) == (3, 2)
    old = json.loads(cfg.to_json())
    for key in ("ldv2_kernel_size", "ldv2_dilation_rate"):
        del old[key]
    before = config_lib.TrainConfig.from_json(json.dumps(old))
    assert window(before) == (5, 3)
    assert window(config_lib.resolve_config("default", {
        "backbone": "resnet_tiny", "ldv2_dilation_rate": "1"})) == (5, 1)
    assert config_lib.resume_conflicts(before, cfg) == ["ldv2_dilation_rate",
                                                         "ldv2_kernel_size"]


def test_deprecated_configs_module_still_answers():
    import importlib

    import training.configs

    with pytest.deprecated_call():
        importlib.reload(training.configs)
    assert training.configs.get("default") == config_lib.TrainConfig()
    assert training.configs.names() == config_lib.preset_names()


# ----------------------------------------------------------------- runs


FULL_RUN_ARGS = TINY + ["--steps", "6", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Uninterrupted 6-step tiny run (checkpoint every 2)."""
    run_dir = tmp_path_factory.mktemp("full")
    out = run_train(FULL_RUN_ARGS + ["--run-dir", str(run_dir)])
    return run_dir, out


def test_run_config_json_round_trips(full_run):
    """`config.json` of a run reads back as exactly the config the command line gave."""
    from training.train import build_parser, config_from_args

    run_dir, _ = full_run
    used = config_from_args(build_parser().parse_args(FULL_RUN_ARGS + ["--run-dir", str(run_dir)]))
    assert config_lib.TrainConfig.from_json((run_dir / "config.json").read_text()) == used


def test_end_to_end_outputs(full_run):
    run_dir, out = full_run
    for name in ("config.json", "model.keras", "metrics.json", "log.csv"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "saved_model" / "saved_model.pb").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 6 and 0.0 <= metrics["mean_iou"] <= 1.0
    assert len(metrics["per_class_iou"]) == 9
    assert "final mIoU" in out and "mean" in out
    rows = (run_dir / "log.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    assert {"loss", "lr", "mean_iou", "step", "train_seconds"} <= set(header)
    assert [float(r.split(",")[header.index("step")]) for r in rows[1:]] == [2, 4, 6]
    seconds = [float(r.split(",")[header.index("train_seconds")]) for r in rows[1:]]
    assert 0 < seconds[0] < seconds[1] < seconds[2]
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["steps"] == 6 and cfg["backbone"] == "resnet_tiny"
    # The SavedModel serves logits at the input resolution.
    import tensorflow as tf

    served = tf.saved_model.load(str(run_dir / "saved_model"))
    logits = served.serve(tf.zeros((1, 48, 64, 3)))
    assert tuple(logits.shape) == (1, 48, 64, 9)


@pytest.mark.slow
def test_resume_matches_uninterrupted(full_run, tmp_path):
    """Interrupted after step 2 (stop_at simulates the kill) then resumed == 6 steps straight:
    the same log, learning rates and (to float32 round-off) weights."""
    full_dir, full_out = full_run
    run_dir = tmp_path / "resumed"
    common = TINY + ["--steps", "6", "--checkpoint-every", "2", "--run-dir", str(run_dir),
                     "--set", "export_saved_model=false"]
    out1 = run_train(common + ["--set", "stop_at=2"])
    assert "stopped at step 2" in out1 and not (run_dir / "model.keras").exists()
    out2 = run_train(common)
    assert "resumed from" in out2 and "at step 2" in out2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 6
    rows = (run_dir / "log.csv").read_text().strip().splitlines()
    steps = [r.split(",")[rows[0].split(",").index("step")] for r in rows[1:]]
    assert [float(s) for s in steps] == [2, 4, 6]  # CSV kept and appended
    # Training time is cumulative across the restart.
    t_col = rows[0].split(",").index("train_seconds")
    seconds = [float(r.split(",")[t_col]) for r in rows[1:]]
    assert 0 < seconds[0] < seconds[1] < seconds[2]
    # The optimizer's iteration count drives the schedule: the last logged lr is the
    # schedule's value at step 6 (0.0) in both runs, and step 4's lr agrees too.
    header = rows[0].split(",")
    full_rows = (full_dir / "log.csv").read_text().strip().splitlines()
    lr_col = header.index("lr")
    assert [r.split(",")[lr_col] for r in rows[1:]] == [
        r.split(",")[full_rows[0].split(",").index("lr")] for r in full_rows[1:]]
    # Tolerance: 1e-5 relative to each variable's max |value| (float32 round-off).
    diff = max_relative_diff(load_weights(run_dir / "model.keras"), load_weights(full_dir / "model.keras"))
    assert diff <= 1e-5, diff


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path):
    """A run killed with SIGKILL after its first checkpoint resumes from it."""
    import signal
    import time

    run_dir = tmp_path / "killed"
    args = TINY + ["--steps", "40", "--checkpoint-every", "2", "--run-dir", str(run_dir),
                   "--set", "export_saved_model=false"]
    proc = start_python(["-m", "training.train", *args], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    ckpt_state = run_dir / "checkpoints" / "checkpoint"
    deadline = time.time() + 90
    while not ckpt_state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert ckpt_state.exists(), "no checkpoint before the deadline"
    out = run_train(args + ["--steps", "40"])
    assert "resumed from" in out
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 40



@pytest.mark.slow
def test_mirrored_two_logical_cpus_matches_single_device(tmp_path):
    """One SGD step on a global batch of 4: 2 replicas (SyncBN) vs one device.

    Run in float64 with every dropout off, tolerance 1e-6 x each variable's max |value|.
    Why float64: in float32 this tiny random-init network's gradients are ill-conditioned
    -- the single-device float32 gradient of `layer3_block0_conv3/kernel` is itself 8.5%
    away from the float64 one (`python benchmarks/grad_precision.py`) -- so any change of summation order (which splitting the
    batch over replicas is) moves some weights by a few percent after one step. In float64
    both runs agree to ~1e-7, which is what shows the algorithm (SyncBN statistics, the
    global pixel mean of the main and aux losses, summed gradients) is the same.
    """
    common = TINY + ["--steps", "1", "--checkpoint-every", "1", "--set", "eval_max_images=1",
                     "--set", "export_saved_model=false", "--set", "loss_distributed_mean=global",
                     "--set", "aspp_dropout=0", "--set", "dtype=float64",
                     "--set", "synthetic_val_images=1"]
    single = tmp_path / "single"
    mirrored = tmp_path / "mirrored"
    # float64 convolutions are slow on CPU: generous timeouts for a loaded machine.
    out1 = run_train(common + ["--devices", "1", "--run-dir", str(single)], timeout=400)
    out2 = run_train(common + ["--devices", "2", "--run-dir", str(mirrored),
                               "--set", f"init_weights={single / 'initial.weights.h5'}"],
                     timeout=400)
    assert "single CPU device" in out1
    assert "MirroredStrategy over 2 logical CPU devices" in out2 and "sync_bn True" in out2
    w1 = load_weights(single / "model.keras")
    w2 = load_weights(mirrored / "model.keras")
    w0 = load_weights_h5(single / "initial.weights.h5")
    assert max_relative_diff(w1, w0) > 1e-3  # the step did move the weights
    diff = max_relative_diff(w2, w1)
    assert diff <= 1e-6, diff


@pytest.mark.slow
def test_mirrored_xla_per_replica_step(tmp_path):
    """`--devices 2 --xla`: the per-replica compiled step trains, and one step lands
    where the uncompiled step with the same (per-replica) BatchNorm lands.

    float32 (no LD block), tolerance 0.1 x each variable's max |value|: XLA reorders
    float32 sums (measured after the step: 3.4e-4 with oneDNN's kernels, 1.8e-2 with
    TF_ENABLE_ONEDNN_OPTS=0, as on AVX2-only CPUs), while the SyncBN model lands 3.1 away
    from the per-replica one, so the tolerance tells the BatchNorm semantics apart. The
    exact float64 check of the same mechanism, on a resize-free model, is
    `tests/models/test_segmenter_replicas.py` (TF's XLA ResizeBilinearGrad cannot run in
    float64).
    """
    common = TINY + ["--steps", "1", "--checkpoint-every", "1", "--set", "eval_max_images=1",
                     "--set", "export_saved_model=false", "--set", "aspp_dropout=0",
                     "--set", "synthetic_val_images=1", "--devices", "2",
                     # No LD block: what is checked is the step and BatchNorm across replicas,
                     # and XLA compiles the tiny net in a fraction of the time without it.
                     "--set", "ld=none"]
    xla_dir, plain_dir = tmp_path / "xla", tmp_path / "plain"
    out1 = run_train(common + ["--xla", "--run-dir", str(xla_dir)], timeout=300)
    assert "sync_bn False; xla True" in out1 and "per-replica" in out1
    out2 = run_train(common + ["--no-xla", "--set", "sync_bn=false", "--run-dir", str(plain_dir),
                               "--set", f"init_weights={xla_dir / 'initial.weights.h5'}"],
                     timeout=300)
    assert "sync_bn False; xla False" in out2
    w1 = load_weights(xla_dir / "model.keras")
    w2 = load_weights(plain_dir / "model.keras")
    assert max_relative_diff(w1, load_weights_h5(xla_dir / "initial.weights.h5")) > 1e-3  # it moved
    assert max_relative_diff(w1, w2) <= 0.1, max_relative_diff(w1, w2)
    with pytest.raises(AssertionError, match="Choose one"):
        run_train(common + ["--xla", "--set", "sync_bn=true", "--run-dir", str(tmp_path / "bad")])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



@pytest.mark.slow
@pytest.mark.parametrize("xla", [False, True], ids=["syncbn", "xla"])
def test_multi_worker_two_processes(tmp_path, xla):
    """Two MultiWorkerMirroredStrategy workers on 127.0.0.1 end with identical weights:
    with SyncBN (no XLA), and with the per-replica XLA step (per-replica BN, moving
    statistics averaged over workers)."""
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    run_dir = tmp_path / "mw"
    args = TINY + ["--steps", "3", "--checkpoint-every", "3", "--run-dir", str(run_dir),
                   "--set", "eval_max_images=1", "--set", "export_saved_model=false",
                   "--set", "ld=none", "--xla" if xla else "--no-xla"]
    procs = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        procs.append(start_python(
            ["-m", "training.train", *args], env={"TF_CONFIG": json.dumps(tf_config)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=360)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert "MultiWorkerMirroredStrategy" in out and "2 replicas" in out
        assert f"sync_bn {not xla}; xla {xla}" in out
    f0, f1 = fingerprint(outs[0]), fingerprint(outs[1])
    assert f0 == f1
    assert "step 3" in outs[0]
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 3
    assert not (run_dir / ".worker_1").exists()
