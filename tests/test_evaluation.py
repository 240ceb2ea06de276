"""`keras_gald.evaluation.evaluate` against confusion matrices counted by hand."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gald import evaluation


def _argmax_model():
    """A model whose logits are its input: the predicted class is the largest channel."""
    images = keras.Input((None, None, 3))
    return keras.Model(images, keras.layers.Identity()(images))


def _one_hot_images(classes):
    return np.eye(3, dtype=np.float32)[classes]


def _dataset(images, masks, batch=1):
    return tf.data.Dataset.from_tensor_slices((images, masks.astype(np.int32))).batch(batch)


PRED = np.array([[[0, 0, 1], [1, 2, 2]],
                 [[2, 2, 2], [0, 1, 1]]])
GT = np.array([[[0, 1, 1], [1, 2, 255]],
               [[2, 2, 0], [0, 255, 1]]])
# Counted by hand from PRED / GT (rows gt, columns prediction; 255 not counted).
CONFUSION = np.array([[2, 0, 1],
                      [1, 3, 0],
                      [0, 0, 3]])


@pytest.mark.parametrize("batch", [1, 2])
def test_confusion_iou_and_accuracy_match_hand_counts(batch):
    results = evaluation.evaluate(_argmax_model(), _dataset(_one_hot_images(PRED), GT, batch),
                                  3, ["a", "b", "c"])
    np.testing.assert_array_equal(results["confusion_matrix"], CONFUSION)
    # IoU = TP / (TP + FP + FN): a 2 / (3 + 3 - 2), b 3 / (3 + 4 - 3), c 3 / (4 + 3 - 3)
    assert results["per_class_iou"] == pytest.approx({"a": 2 / 4, "b": 3 / 4, "c": 3 / 4})
    assert results["mean_iou"] == pytest.approx((0.5 + 0.75 + 0.75) / 3)
    assert results["pixel_accuracy"] == pytest.approx(8 / 10)
    assert results["per_class_accuracy"] == pytest.approx({"a": 2 / 3, "b": 3 / 4, "c": 1.0})
    assert results["mean_accuracy"] == pytest.approx((2 / 3 + 3 / 4 + 1) / 3)
    assert results["num_images"] == 2
    table = evaluation.iou_table(results, title="t")
    assert "50.00" in table and "75.00" in table


def test_max_images_and_absent_classes():
    results = evaluation.evaluate(_argmax_model(), _dataset(_one_hot_images(PRED), GT, 2), 4,
                                  max_images=1)
    assert results["num_images"] == 1
    np.testing.assert_array_equal(np.asarray(results["confusion_matrix"])[:3, :3],
                                  [[1, 0, 0], [1, 2, 0], [0, 0, 1]])
    # class_3 is in neither ground truth nor prediction: no IoU, not in the mean.
    assert results["per_class_iou"]["class_3"] is None
    assert results["mean_iou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)


def test_eval_scale_resizes_the_input_and_measures_at_label_size():
    # An 8x8 image of class 0 with a one-pixel column of class 2 at x = 0. At scale 1/4
    # the 2x2 input samples columns 1-2 and 5-6 (half-pixel centres): the column is gone
    # and its 8 pixels are predicted as class 0, at the labels' full 8x8 size.
    gt = np.zeros((1, 8, 8), np.int64)
    gt[:, :, 0] = 2
    images = _one_hot_images(gt)
    full = evaluation.evaluate(_argmax_model(), _dataset(images, gt), 3)
    np.testing.assert_array_equal(full["confusion_matrix"], [[56, 0, 0], [0, 0, 0], [0, 0, 8]])
    small = evaluation.evaluate(_argmax_model(), _dataset(images, gt), 3, eval_scale=0.25)
    np.testing.assert_array_equal(small["confusion_matrix"], [[56, 0, 0], [0, 0, 0], [8, 0, 0]])


def test_on_image_and_boundary():
    seen = []
    results = evaluation.evaluate(
        _argmax_model(), _dataset(_one_hot_images(PRED), GT), 3, boundary=True,
        on_image=lambda i, image, pred, gt, path: seen.append((i, pred.tolist(), path)))
    assert seen == [(0, PRED[0].tolist(), None), (1, PRED[1].tolist(), None)]
    assert len(results["boundary_f"]["mean_f"]) == 4
    assert len(results["boundary_f"]["per_class_f"]) == 4


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        evaluation.evaluate(_argmax_model(), [], 3, ["a", "b"])
    with pytest.raises(ValueError, match="eval_scale"):
        evaluation.evaluate(_argmax_model(), [], 3, eval_scale=0)
