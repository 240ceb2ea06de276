"""Bad images are named -- in the tf.data pipeline (through
`keras-gald evaluate`), in `prescan`, and by `keras-gald predict`, which still writes
predictions for every readable image."""

import numpy as np
import pytest
from PIL import Image

from tests.reliability.conftest import assert_one_line_error, run_cli


def _jpeg(path, seed=0, size=(40, 48)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size + (3,)).astype(np.uint8)).save(path, quality=90)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def bad_folder(tmp_path):
    """Folder data set (2 classes): im0 good, im1 a truncated JPEG, im2 text saved as .jpg."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("a\nb\n")
    for i in range(3):
        _jpeg(root / "images" / f"im{i}.jpg", seed=i)
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(root / "labels" / f"im{i}.png")
    _truncate(root / "images" / "im1.jpg")
    (root / "images" / "im2.jpg").write_text("this is not an image\n")
    return root


@pytest.mark.parametrize("broken,message", [("im1.jpg", "truncated"),
                                            ("im2.jpg", "not a JPEG/PNG")])
def test_pipeline_names_the_bad_file(bad_folder, broken, message):
    from keras_gald import data

    # Only the good pair and the broken one, so the error is about `broken`.
    for other in {"im1.jpg", "im2.jpg"} - {broken}:
        (bad_folder / "images" / other).unlink()
        (bad_folder / "labels" / other.replace(".jpg", ".png")).unlink()
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        for _ in data.make_eval_dataset(data.folder(bad_folder)):
            pass
    text = str(info.value)
    assert message in text and str(bad_folder / "images" / broken) in text


def test_prescan_decodes_and_names_truncated_jpeg(bad_folder):
    from keras_gald import data

    (bad_folder / "images" / "im2.jpg").unlink()
    (bad_folder / "labels" / "im2.png").unlink()
    with pytest.raises(ValueError, match="im1.jpg"):
        data.make_dataset(data.folder(bad_folder), crop_size=(32, 32), batch_size=1,
                          prescan=True)


def test_evaluate_on_bad_image_is_one_line_naming_it(bad_folder, tmp_path):
    from keras_gald.models import GALD

    (bad_folder / "images" / "im2.jpg").unlink()
    (bad_folder / "labels" / "im2.png").unlink()
    model = GALD("resnet_tiny", ga=None, ld=None, num_classes=2, aux_head=False,
                 head_channels=8)
    model.save(tmp_path / "two.keras")
    proc = run_cli("evaluate", "--model", tmp_path / "two.keras", "--dataset", "folder",
                   "--data-dir", bad_folder, "--out", tmp_path / "out")
    assert_one_line_error(proc, "evaluate", 1, "truncated", "im1.jpg")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_predict_keeps_going_past_unreadable_images(finished_run, bad_folder, tmp_path):
    out = tmp_path / "pred"
    proc = run_cli("predict", "--model", finished_run / "model.keras",
                   bad_folder / "images", tmp_path / "missing.png", "--out", out)
    line = assert_one_line_error(proc, "predict", 1, "3 of 4 input(s) could not be read")
    for name in ("im1.jpg", "im2.jpg", "missing.png"):
        assert name in line
        assert any(l.startswith("keras-gald predict: cannot read image") and name in l
                   for l in proc.stderr.splitlines()), name
    assert sorted(p.name for p in out.iterdir()) == ["im0_mask.png", "im0_overlay.png"]
    assert Image.open(out / "im0_mask.png").size == (48, 40)
    assert "wrote 1 prediction(s)" in proc.stdout
