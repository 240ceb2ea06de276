"""Smoke test on the real CamVid copy in ../shared (skips when absent)."""

import numpy as np

from keras_gald import data
from tests.conftest import CAMVID_DIR, require_shared


def test_camvid_real_folder_two_images():
    root = require_shared(CAMVID_DIR)
    train = data.camvid(root, "train")
    val = data.camvid(root, "val")
    assert len(train.pairs) == 367 and len(val.pairs) == 101
    assert train.pairs[0][0].endswith("train/images/0001TP_006690.jpg")
    assert train.pairs[0][1].endswith("train/labels/0001TP_006690.png")

    two = (train.pairs[:2], train.info)
    for images, masks in data.make_eval_dataset(two, normalization=None):
        assert images.shape == (1, 360, 480, 3) and masks.shape == (1, 360, 480)
        values = set(np.unique(masks.numpy()))
        assert values <= set(range(11)) | {255} and len(values) > 4
        assert 0 <= images.numpy().min() and images.numpy().max() <= 255

    ds = data.make_dataset(two, crop_size=(96, 128), batch_size=2, seed=0, normalization="bgr_mean")
    images, masks = next(iter(ds))
    assert images.shape == (2, 96, 128, 3) and masks.shape == (2, 96, 128)
    assert set(np.unique(masks.numpy())) <= set(range(11)) | {255}
    data.check_pairs(train.pairs[:2], train.info)
