"""Fixtures for the evaluate / predict / export CLI tests: a tiny saved model and a tiny
folder-layout data set (written with PIL; no network)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from PIL import Image

from keras_gald.models import GALD

CLASSES = ["sky", "road", "car"]


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = GALD("resnet_tiny", ga="aspp", ld="v1", num_classes=len(CLASSES), head_channels=32,
                 aspp_filters=16)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(65, 97), (48, 64), (57, 73)]):
        label = np.zeros((h, w), np.uint8)
        label[h // 2:] = 1
        label[h // 2:, w // 3: w // 2] = 2
        label[:3, :3] = 255
        image = np.zeros((h, w, 3), np.uint8)
        image[label == 0] = (120, 170, 240)
        image[label == 1] = (90, 90, 90)
        image[label == 2] = (200, 30, 30)
        image = np.clip(image + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"img{i}.png")
        Image.fromarray(label).save(root / "labels" / f"img{i}.png")
    return root
