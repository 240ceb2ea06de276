"""User errors are one line on stderr with exit
code 2, caught before anything is built or written; `convert --lenient` refuses to save a
model into which nothing loaded."""

import numpy as np
import pytest
from PIL import Image

from tests.reliability.conftest import assert_one_line_error, listing, run_cli

# Settings rejected by `train --print-config`, i.e. before TensorFlow builds anything.
TRAIN_CONFIG_ERRORS = [
    (["--config", "nosuch"], ["unknown config 'nosuch'"]),
    (["--set", "nonexistent=1"], ["unknown config key 'nonexistent'"]),
    (["--set", "steps=abc"], ["--set steps=abc", "invalid literal"]),
    (["--set", "steps"], ["--set expects KEY=VALUE"]),
    (["--config", "camvid"], ["pass --data-dir"]),
    (["--crop", "0"], ["crop size 0x0", "minimum of 16x16"]),
    (["--crop", "8,8"], ["crop size 8x8", "minimum of 16x16"]),
    (["--set", "backbone=nosuch"], ["unknown backbone 'nosuch'"]),
    (["--lr", "-0.1"], ["lr must be a positive"]),
    (["--steps", "x"], ["--steps", "invalid int value"]),
]

# The same checks in-process (each subprocess above costs a TensorFlow import).
TRAIN_CONFIG_ERRORS_IN_PROCESS = [
    (["--config", "camvid", "--data-dir", "/nonexistent/camvid"], ["/nonexistent/camvid",
                                                                   "does not exist"]),
    (["--set", "ga=nosuch"], ["unknown ga 'nosuch'"]),
    (["--set", "ld=v3"], ["unknown ld 'v3'"]),
    (["--set", "output_stride=4"], ["unknown output_stride 4"]),
    (["--set", "output_stride=16", "--crop", "24"], ["crop size 24x24", "minimum of 32x32"]),
    (["--lr", "nan"], ["lr must be a positive"]),
    (["--set", "keep_checkpoints=0"], ["keep_checkpoints must be >= 1"]),
    (["--set", "init_weights=/nonexistent/w.weights.h5"], ["init_weights", "does not exist"]),
    (["--set", "crop_size=1,2,3"], ["crop_size needs 2"]),
    (["--set", "flip=maybe"], ["--set flip=maybe", "boolean"]),
    (["--devices", "2", "--xla", "--set", "sync_bn=true"],
     ["xla=True and sync_bn=True over 2 replicas", "--no-xla, or --set sync_bn=false"]),
    (["--set", "ldv2_kernel_size=4"], ["ldv2_kernel_size must be an odd int >= 1, got 4"]),
    (["--set", "ldv2_dilation_rate=0"], ["ldv2_dilation_rate must be >= 1, got 0"]),
    (["--set", "ld=v1", "--set", "ldv2_kernel_size=7"],
     ["ldv2_kernel_size=7 set, but ld is v1", "LDv2's window only"]),
]


@pytest.mark.parametrize("args,fragments", TRAIN_CONFIG_ERRORS,
                         ids=[" ".join(a) for a, _ in TRAIN_CONFIG_ERRORS])
def test_train_config_errors_are_one_line_before_start_up(args, fragments, tmp_path):
    proc = run_cli("train", *args, "--run-dir", tmp_path / "run", "--print-config")
    assert_one_line_error(proc, "train", 2, *fragments)
    assert not (tmp_path / "run").exists()
    assert "resolved config" not in proc.stdout


@pytest.mark.parametrize("args,fragments", TRAIN_CONFIG_ERRORS_IN_PROCESS,
                         ids=[" ".join(a) for a, _ in TRAIN_CONFIG_ERRORS_IN_PROCESS])
def test_train_config_errors_in_process(args, fragments, tmp_path, capsys):
    from training import train

    code = train.main([*args, "--run-dir", str(tmp_path / "run"), "--print-config"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("keras-gald train: error:"), err
    for fragment in fragments:
        assert fragment in err[0]
    assert not (tmp_path / "run").exists()


def test_debug_flag_keeps_the_traceback(tmp_path):
    proc = run_cli("train", "--set", "nonexistent=1", "--debug", "--print-config")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "corrupt.keras").write_bytes(b"PK\x03\x04 this is not really a zip")
    (root / "an_existing_file").write_text("keep me")
    return root


def test_evaluate_missing_and_corrupt_model(bad_files, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    proc = run_cli("evaluate", "--model", bad_files / "missing.keras", "--dataset", "folder",
                   "--data-dir", data)
    assert_one_line_error(proc, "evaluate", 2, "missing.keras", "does not exist")
    proc = run_cli("evaluate", "--model", bad_files / "corrupt.keras", "--dataset", "folder",
                   "--data-dir", data)
    line = assert_one_line_error(proc, "evaluate", 2, "corrupt.keras", "not a .keras archive")
    assert "not found" not in line.lower()


def _folder_dataset(root, classes, sizes=((40, 48),)):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "images" / f"im{i}.png")
        Image.fromarray(np.zeros((h, w), np.uint8)).save(root / "labels" / f"im{i}.png")
    return root


def test_evaluate_model_and_data_disagree(finished_run, tmp_path):
    """The shared run's model has 9 classes; this folder data set has 3."""
    data = _folder_dataset(tmp_path / "data", ["a", "b", "c"])
    proc = run_cli("evaluate", "--model", finished_run / "model.keras", "--dataset", "folder",
                   "--data-dir", data, "--out", tmp_path / "out")
    assert_one_line_error(proc, "evaluate", 2, "predicts 9 classes", "has 3")
    assert not (tmp_path / "out").exists()


def test_predict_out_is_an_existing_file(finished_run, bad_files, tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    proc = run_cli("predict", "--model", finished_run / "model.keras", image,
                   "--out", bad_files / "an_existing_file")
    assert_one_line_error(proc, "predict", 2, "an_existing_file", "not a directory")
    assert (bad_files / "an_existing_file").read_text() == "keep me"


def test_predict_inputs_with_the_same_stem_are_refused(finished_run, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / sub / "frame.png")
    proc = run_cli("predict", "--model", finished_run / "model.keras", tmp_path / "a",
                   tmp_path / "b", "--out", tmp_path / "out")
    assert_one_line_error(proc, "predict", 2, "frame.png", "same outputs")
    assert not (tmp_path / "out").exists()


def test_export_refuses_existing_out_and_missing_model(finished_run, bad_files, tmp_path):
    proc = run_cli("export", "--model", finished_run / "model.keras", "--format", "onnx",
                   "--out", bad_files / "an_existing_file")
    assert_one_line_error(proc, "export", 2, "an_existing_file", "--overwrite")
    assert (bad_files / "an_existing_file").read_text() == "keep me"
    proc = run_cli("export", "--model", tmp_path / "nope.keras", "--format", "onnx",
                   "--out", tmp_path / "m.onnx")
    assert_one_line_error(proc, "export", 2, "nope.keras", "does not exist")


def test_convert_lenient_with_nothing_loaded_fails(tmp_path):
    junk = tmp_path / "junk.npz"
    np.savez(junk, **{"nothing.weight": np.zeros(3, np.float32)})
    out = tmp_path / "out.keras"
    proc = run_cli("convert", junk, "--depth", "50", "--num-classes", "3", "--lenient",
                   "--out", out)
    assert_one_line_error(proc, "convert", 1, "0 loaded", "junk.npz", "nothing saved")
    assert listing(tmp_path) == ["junk.npz"]


def test_convert_argument_errors(tmp_path):
    proc = run_cli("convert", tmp_path / "missing.npz", "--out", tmp_path / "o.keras")
    assert_one_line_error(proc, "convert", 2, "missing.npz", "does not exist")
    (tmp_path / "c.npz").write_bytes(b"")
    proc = run_cli("convert", tmp_path / "c.npz", "--out", tmp_path / "o.h5")
    assert_one_line_error(proc, "convert", 2, "must end with .keras")  # argparse-style, one line
