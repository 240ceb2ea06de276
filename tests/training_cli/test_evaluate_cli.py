"""`keras-gald evaluate` on a tiny model and a generated folder data set."""

import json

import numpy as np
import pytest
from PIL import Image

from training import cli, evaluate


def test_evaluate_whole_writes_json_table_and_pngs(tiny_model_path, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = cli.main(["evaluate", "--model", str(tiny_model_path), "--dataset", "folder",
                   "--data-dir", str(tiny_dataset), "--boundary", "--out", str(out),
                   "--images-to-show", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "road" in text and "mIoU" in text and "boundary F" in text
    results = json.loads((out / "metrics.json").read_text())
    assert results["num_images"] == 3
    assert set(results["per_class_iou"]) == {"sky", "road", "car"}
    cm = np.asarray(results["confusion_matrix"])
    # every labelled pixel (not 255) counted once
    labelled = sum((np.asarray(Image.open(p)) != 255).sum()
                   for p in (tiny_dataset / "labels").iterdir())
    assert cm.sum() == labelled
    diag = np.diag(cm).sum() / cm.sum()
    assert results["pixel_accuracy"] == pytest.approx(diag)
    ious = [v for v in results["per_class_iou"].values() if v is not None]
    assert results["mean_iou"] == pytest.approx(np.mean(ious))
    assert len(results["boundary_f"]["mean_f"]) == 4
    examples = sorted((out / "examples").glob("*.png"))
    assert len(examples) == 2
    first = Image.open(examples[0])
    assert first.height >= 65 and first.width > 4 * 97  # four panels side by side
    assert Image.open(out / "confusion_matrix.png").size[0] > 50


def test_evaluate_sliding_flip_scales_limit(tiny_model_path, tiny_dataset, tmp_path):
    out = tmp_path / "eval2"
    rc = evaluate.main(["--model", str(tiny_model_path), "--dataset", "folder",
                        "--data-dir", str(tiny_dataset), "--sliding", "40", "--scales", "0.75", "1",
                        "--flip", "--limit", "1", "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "metrics.json").read_text())
    assert results["num_images"] == 1
    assert results["inference"] == {"sliding": [40, 40], "stride": None, "scales": [0.75, 1.0],
                                    "flip": True, "eval_scale": 1.0}
    assert np.asarray(results["confusion_matrix"]).sum() == 65 * 97 - 9


def test_evaluate_matches_metrics_on_direct_predictions(tiny_model_path, tiny_dataset):
    import keras

    from keras_gald import data, metrics

    model = keras.saving.load_model(tiny_model_path, compile=False)
    source = evaluate.load_source("folder", str(tiny_dataset), None)
    results = evaluate.evaluate(model, source, verbose=0)
    cm = 0
    for image, mask in data.make_eval_dataset(source):
        pred = model.predict(image, verbose=0).argmax(-1)
        cm = cm + metrics.confusion_matrix_np(mask.numpy(), pred, 3)
    _, miou = metrics.iou_from_confusion(cm)
    assert results["mean_iou"] == pytest.approx(miou)


def test_cli_output_is_the_library_routine(tiny_model_path, tiny_dataset, tmp_path):
    """`keras-gald evaluate` reports exactly what `keras_gald.evaluation.evaluate` returns."""
    from keras_gald import data, evaluation
    from keras_gald.io import load_model

    out = tmp_path / "eval3"
    assert cli.main(["evaluate", "--model", str(tiny_model_path), "--dataset", "folder",
                     "--data-dir", str(tiny_dataset), "--sliding", "40", "--flip",
                     "--boundary", "--out", str(out)]) == 0
    written = json.loads((out / "metrics.json").read_text())
    source = evaluate.load_source("folder", str(tiny_dataset), None)
    library = evaluation.evaluate(load_model(tiny_model_path), data.make_eval_dataset(source),
                                  3, source[1].class_names, sliding=(40, 40), flip=True,
                                  boundary=True)
    assert {k: written[k] for k in library} == json.loads(json.dumps(library))
