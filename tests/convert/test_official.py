"""The authors' PyTorch checkpoints -> official_gald_v1 / GALD models: values, reports, errors, CLI."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gald.convert.official import (
    OfficialCheckpointError,
    load_official_state_dict,
    official_state_dict_from_keras,
)
from keras_gald.convert.official_resnet import read_state_dict
from keras_gald.losses import SegmentationCrossEntropy
from keras_gald.models.gald import GALD
from keras_gald.models.official import build_gald_head, official_gald_v1
from tests.conftest import OfficialFixture
from tests.convert._state_dicts import random_state_dict
from tests.harness import assert_close_relative
from tests.models.test_official import keras_variable_for_key, official_keys, to_keras_layout
from training import convert as convert_cli

LEGACY_STEM = {"conv1.0": "conv1", "conv1.1": "bn1", "conv1.3": "conv2", "conv1.4": "bn2", "conv1.6": "conv3", "bn1": "bn3"}
IMAGE_HW = (113, 121)  # the smallest kind of input the authors' LDv1 allows (>= 111)


def assert_values_loaded(model, state, depth=None, skip=()):
    for key, value in state.items():
        if key.endswith("num_batches_tracked") or key.startswith(skip):
            continue
        variable = keras_variable_for_key(model, key, depth)
        np.testing.assert_array_equal(variable.numpy(), to_keras_layout(value, variable), err_msg=key)


def images(n=1, hw=IMAGE_HW, seed=0):
    return np.random.default_rng(seed).normal(0, 1, (n, *hw, 3)).astype("float32")


@pytest.fixture(scope="module")
def r50_keys():
    return official_keys(50)[0]


@pytest.fixture(scope="module")
def r50_state(r50_keys):
    return random_state_dict(r50_keys, seed=0)


@pytest.fixture(scope="module")
def converted(r50_state):
    """A converted R50 network (never modified by tests), its report and reference logits."""
    model = official_gald_v1(50, num_classes=19)
    report = load_official_state_dict(model, r50_state)
    x = images()
    return model, report, x, model.predict(x, verbose=0)


def test_head_fixture_through_the_converter():
    fixture = OfficialFixture("head_GALDHead")
    head = build_gald_head(64, num_classes=19)
    report = load_official_state_dict(head, fixture.state_dict)
    assert report.ok and report.checkpoint_kind == "head" and report.parts == ["head"]
    assert len(report.loaded) == 47 and len(report.skipped) == 7
    assert report.untouched == [] and report.ignored == []
    for x, expected in fixture.cases:
        actual = head(x).numpy()
        assert_close_relative(actual, expected, rtol=1e-4)
        assert np.abs(actual - expected).max() < 1e-4
    exported = official_state_dict_from_keras(head)
    kept = {k: v for k, v in fixture.state_dict.items() if not k.endswith("num_batches_tracked")}
    assert set(exported) == set(kept)
    for key, value in kept.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_r50_every_key_lands_on_its_weight(converted, r50_state):
    model, report, x, logits = converted
    assert report.ok and report.checkpoint_kind == "network" and report.stem_format == "deep"
    assert report.parts == ["backbone", "head", "dsn"]
    assert set(report.loaded) == {k for k in r50_state if not k.endswith("num_batches_tracked")}
    assert set(report.skipped) == {k for k in r50_state if k.endswith("num_batches_tracked")}
    assert report.untouched == [] and report.ignored == []
    assert_values_loaded(model, r50_state, depth=50)
    assert logits.shape == (1, 15, 16, 19) and np.isfinite(logits).all() and np.abs(logits).max() > 1e-2
    exported = official_state_dict_from_keras(model)
    assert set(exported) == set(report.loaded)
    np.testing.assert_array_equal(exported["head.a2block.down.0.weight"], r50_state["head.a2block.down.0.weight"])


def test_legacy_stem_names_and_module_prefix(converted, r50_state):
    model, _, x, logits = converted
    target = model  # the same values under the old names: the weights must not change

    def legacy(key):
        module, param = key.rsplit(".", 1)
        return f"{LEGACY_STEM[module]}.{param}" if module in LEGACY_STEM else key

    old = {f"module.{legacy(k)}": v for k, v in r50_state.items()}
    assert "module.conv2.weight" in old and old["module.bn1.weight"].shape == (64,)
    report = load_official_state_dict(target, old)
    assert report.ok and report.stem_format == "deep_legacy"
    assert "bn3.running_var" in report.loaded and "conv1.0.weight" not in report.loaded
    assert_values_loaded(target, r50_state, depth=50)
    np.testing.assert_array_equal(target.predict(x, verbose=0), logits)


def test_npz_file_and_torch_like_tensors(tmp_path):
    fixture = OfficialFixture("head_GALDHead")

    class TorchLike:  # duck-types torch.Tensor (.shape, .detach().cpu().numpy())
        def __init__(self, array):
            self.array, self.shape = array, array.shape

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.array

    head = build_gald_head(64, num_classes=19)
    report = load_official_state_dict(head, {k: TorchLike(v) for k, v in fixture.state_dict.items()})
    assert report.ok
    x, expected = fixture.cases[1]
    assert_close_relative(head(x).numpy(), expected)

    path = tmp_path / "head.npz"
    np.savez(path, **{f"module.{k}": v for k, v in fixture.state_dict.items()})
    other = build_gald_head(64, num_classes=19)
    assert load_official_state_dict(other, str(path)).ok
    np.testing.assert_array_equal(other(x).numpy(), head(x).numpy())


def test_pth_without_torch_is_read_or_a_clear_error(tmp_path):
    head = build_gald_head(8, 2, interplanes=16)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_official_state_dict(head, tmp_path / "absent.npz")
    try:
        import torch  # noqa: F401
    except ImportError:
        path = tmp_path / "GALD_res50.pth"
        path.write_bytes(b"not read")
        with pytest.raises(ValueError, match=r"GALD_res50\.pth.*PyTorch is not installed"):
            load_official_state_dict(head, path)
        from tests.backbones._torch_files import save_zip

        state = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1)}
        save_zip(path, state)
        read = read_state_dict(path)
        np.testing.assert_array_equal(read["a.weight"], state["a.weight"])
    else:
        pytest.skip("PyTorch is installed")


def test_strict_errors_name_missing_unexpected_and_mismatched_keys(r50_state):
    model = official_gald_v1(50, num_classes=19)
    bad = dict(r50_state)
    del bad["layer3.5.bn2.running_var"]
    del bad["head.a2block.long_relation.gn.bias"]
    bad["head.extra.weight"] = np.zeros(3, np.float32)
    bad["head.convb.0.weight"] = np.zeros((512, 512, 1, 1), np.float32)
    before = model.get_layer("head_conva_conv").kernel.numpy().copy()
    with pytest.raises(OfficialCheckpointError) as info:
        load_official_state_dict(model, bad)
    message = str(info.value)
    for name in ("layer3.5.bn2.running_var", "head.a2block.long_relation.gn.bias", "head.extra.weight",
                 "head.convb.0.weight checkpoint (512, 512, 1, 1) vs model (512, 512, 3, 3)"):
        assert name in message
    assert isinstance(info.value, ValueError)
    report = info.value.report
    assert report.missing == ["head.a2block.long_relation.gn.bias", "layer3.5.bn2.running_var"]
    assert report.unexpected == ["head.extra.weight"]
    np.testing.assert_array_equal(model.get_layer("head_conva_conv").kernel.numpy(), before)  # untouched

    convb_before = model.get_layer("head_convb_conv").kernel.numpy().copy()
    lenient = load_official_state_dict(model, bad, strict=False)
    assert not lenient.ok and lenient.missing == report.missing and "lenient" in str(lenient)
    assert_values_loaded(model, r50_state, depth=50, skip=(
        "layer3.5.bn2.running_var", "head.a2block.long_relation.gn.bias", "head.convb.0.weight"))
    np.testing.assert_array_equal(model.get_layer("head_convb_conv").kernel.numpy(), convb_before)

    # A ResNet-101 checkpoint and a 21-class checkpoint into the R50 / 19-class network.
    keys101 = official_keys(101)[0]
    zeros101 = {k: np.zeros(s, np.float32) for k, s in keys101}
    with pytest.raises(OfficialCheckpointError, match=r"unexpected keys \(306\): .*layer3\.22\.bn3\.weight"):
        load_official_state_dict(model, zeros101)
    classes21 = random_state_dict(official_keys(50)[0], seed=2, classes=21)
    with pytest.raises(OfficialCheckpointError, match=r"shape mismatches \(4\): dsn\.4\.bias checkpoint \(21,\)"):
        load_official_state_dict(model, classes21)


def test_aux_free_model_ignores_dsn_keys(r50_state, converted):
    model, _, x, logits = converted
    inference = official_gald_v1(50, num_classes=19, aux_head=False)
    report = load_official_state_dict(inference, r50_state)
    assert report.ok and report.parts == ["backbone", "head"]
    assert sorted(report.ignored) == sorted(k for k in r50_state if k.startswith("dsn."))
    np.testing.assert_array_equal(inference.predict(x, verbose=0), logits)


def test_backbone_checkpoint_into_gald_and_official_models(r50_state):
    backbone_only = {f"module.{k}": v for k, v in r50_state.items() if not k.startswith(("head.", "dsn."))}
    backbone_only["module.fc.weight"] = np.zeros((1000, 2048), np.float32)
    backbone_only["module.fc.bias"] = np.zeros(1000, np.float32)

    gald = GALD("resnet50", ga=None, ld=None, stem="deep", num_classes=3, aux_head=True)
    head_before = gald.get_layer("head_conv").kernel.numpy().copy()
    report = load_official_state_dict(gald, backbone_only)
    assert report.ok and report.checkpoint_kind == "backbone" and report.parts == ["backbone"]
    assert report.ignored == ["fc.bias", "fc.weight"]
    assert set(report.untouched) == {"head_conv", "head_bn", "classifier", "aux_conv", "aux_bn", "aux_classifier"}
    backbone = gald.get_layer("resnet50")
    for key in ("conv1.0.weight", "bn1.running_var", "layer4.2.conv2.weight", "layer3.0.downsample.1.bias"):
        variable = keras_variable_for_key(_Renamed(backbone), key, 50)
        np.testing.assert_array_equal(variable.numpy(), to_keras_layout(r50_state[key], variable), err_msg=key)
    np.testing.assert_array_equal(gald.get_layer("head_conv").kernel.numpy(), head_before)

    official = official_gald_v1(50, num_classes=19)
    report = load_official_state_dict(official, backbone_only)
    assert report.ok and report.parts == ["backbone"]
    assert {"head_a2block", "head_classifier", "dsn_conv"} <= set(report.untouched)
    assert_values_loaded(official, {k[len("module."):]: v for k, v in backbone_only.items()}, 50, skip=("fc.",))

    with pytest.raises(ValueError, match="stem='deep'"):
        load_official_state_dict(GALD("resnet_tiny", ga=None, ld=None, stem="classic"), backbone_only)
    with pytest.raises(OfficialCheckpointError, match=r"shape mismatches .*conv1\.0\.weight checkpoint \(64, 3, 3, 3\)"):
        load_official_state_dict(GALD("resnet_tiny", ga=None, ld=None, stem="deep"), backbone_only)
    with pytest.raises(ValueError, match="no layers the authors' checkpoints map to"):
        load_official_state_dict(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), backbone_only)


class _Renamed:
    """Lets `keras_variable_for_key` read a GALD model's nested, unprefixed backbone."""

    def __init__(self, backbone):
        self.backbone = backbone

    def get_layer(self, name):
        if name.startswith("backbone_resnet"):
            return self
        return self.backbone.get_layer(name[len("backbone_"):])


@pytest.mark.slow
def test_cli_npz_to_keras_round_trip_then_export_and_fit(converted, r50_state, tmp_path, capsys):
    """The CLI converts an .npz, saves .keras; the reloaded model predicts identically,
    exports, and trains."""
    model, _, x, logits = converted
    checkpoint = tmp_path / "GALD_res50.npz"
    np.savez(checkpoint, **{f"module.{k}": v for k, v in r50_state.items()})
    out = tmp_path / "out" / "gald50.keras"
    assert convert_cli.main([str(checkpoint), "--depth", "50", "--num-classes", "19", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "missing: 0, unexpected: 0, shape mismatches: 0" in printed and "saved" in printed
    restored = keras.models.load_model(out)
    assert type(restored).__name__ == "Segmenter" and restored.has_aux_head
    np.testing.assert_array_equal(restored.predict(x, verbose=0), logits)

    export_dir = str(tmp_path / "saved_model")
    restored.export(export_dir, verbose=False)
    reloaded = tf.saved_model.load(export_dir)
    served = reloaded.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(served, logits, rtol=0, atol=1e-4 * np.abs(logits).max())

    restored.compile(
        optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
        loss=SegmentationCrossEntropy(align_corners=True),  # the authors upsample with align_corners=True
        aux_loss=SegmentationCrossEntropy(align_corners=True),
        aux_loss_weight=0.4,
    )
    labels = np.random.default_rng(1).integers(0, 19, (1, *IMAGE_HW)).astype("int32")
    labels[:, :10] = 255
    history = restored.fit(x, labels, batch_size=1, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for name in ("head_classifier", "dsn_classifier", "head_conva_conv"):
        assert not np.array_equal(restored.get_layer(name).kernel.numpy(), model.get_layer(name).kernel.numpy())

    # --overwrite: an existing --out is otherwise refused up front (exit 2).
    assert convert_cli.main([str(checkpoint), "--depth", "50", "--num-classes", "21", "--out", str(out),
                             "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "head.bottleneck.3.weight checkpoint (19, 512, 1, 1) vs model (21, 512, 1, 1)" in err
    with pytest.raises(SystemExit):
        convert_cli.main([str(checkpoint), "--out", str(tmp_path / "model.h5")])
