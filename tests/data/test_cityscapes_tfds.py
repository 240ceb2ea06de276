"""Cityscapes through tensorflow_datasets, offline, from tiny zips built in the test.

tfds' `cityscapes/semantic_segmentation` builder reads `leftImg8bit_trainvaltest.zip` and
`gtFine_trainvaltest.zip` from `manual_dir` and insists on 1024x2048 images, so the fixture
writes one flat-coloured (hence tiny) 1024x2048 PNG pair per split. Sockets are blocked so the
test fails rather than touching the network.
"""

import io
import re
import socket
import zipfile

import numpy as np
import pytest
from PIL import Image

from keras_gald import data

pytest.importorskip("tensorflow_datasets")


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def make_cityscapes_zips(manual_dir):
    manual_dir.mkdir(parents=True, exist_ok=True)
    label = np.zeros((1024, 2048), np.uint8)
    label[:, 512:1024] = 7  # road
    label[:, 1024:1536] = 26  # car
    label[:, 1536:] = 33  # bicycle
    image = np.zeros((1024, 2048, 3), np.uint8)
    image[..., 0] = label
    with zipfile.ZipFile(manual_dir / "leftImg8bit_trainvaltest.zip", "w") as images, \
            zipfile.ZipFile(manual_dir / "gtFine_trainvaltest.zip", "w") as labels:
        for split, city in (("train", "aachen"), ("val", "lindau"), ("test", "berlin")):
            stem = f"{city}_000000_000019"
            images.writestr(f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", _png(image))
            labels.writestr(f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png", _png(label))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_cityscapes_tfds_from_manual_dir(tmp_path, no_network):
    make_cityscapes_zips(tmp_path / "manual")
    dataset, info = data.cityscapes_tfds(
        "validation", manual_dir=tmp_path / "manual", data_dir=tmp_path / "tfds"
    )
    assert info is data.CITYSCAPES_INFO
    images, masks = next(iter(data.make_eval_dataset((dataset, info), normalization=None)))
    assert images.shape == (1, 1024, 2048, 3) and masks.shape == (1, 1024, 2048)
    masks = masks.numpy()[0]
    np.testing.assert_array_equal(masks[0, [0, 600, 1100, 2000]], [255, 0, 13, 18])
    np.testing.assert_array_equal(images.numpy()[0, 0, [0, 600, 1100, 2000], 0], [0, 7, 26, 33])
    # training crops from the same prepared data (no second preparation)
    train, _ = data.cityscapes_tfds("train", data_dir=tmp_path / "tfds", download_and_prepare=False)
    x, y = next(iter(data.make_dataset((train, info), crop_size=(64, 64), batch_size=1, seed=0)))
    assert x.shape == (1, 64, 64, 3) and set(np.unique(y.numpy())) <= {0, 13, 18, 255}


def test_cityscapes_tfds_missing_zip_is_named(tmp_path, no_network):
    manual = tmp_path / "manual"
    manual.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape("leftImg8bit_trainvaltest.zip") + ".*" + re.escape(str(manual))):
        data.cityscapes_tfds("train", manual_dir=manual, data_dir=tmp_path / "tfds")
