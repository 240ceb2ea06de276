"""The authors' ResNet state_dict keys -> keras_gald backbones (from the published key lists)."""

import json
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from keras_gald.backbones import build_resnet
from keras_gald.convert.official_resnet import (
    load_official_resnet,
    load_official_resnet_file,
    read_state_dict,
)
from keras_gald.convert.torch_weights import StateDict
from tests.conftest import OFFICIAL_DIR, require_shared
from tests.convert._state_dicts import random_state_dict

NEW_STEM = {
    "conv1.0": "stem_conv1",
    "conv1.1": "stem_bn1",
    "conv1.3": "stem_conv2",
    "conv1.4": "stem_bn2",
    "conv1.6": "stem_conv3",
    "bn1": "stem_bn3",
}
NEW_TO_LEGACY = {"conv1.0": "conv1", "conv1.1": "bn1", "conv1.3": "conv2", "conv1.4": "bn2", "conv1.6": "conv3", "bn1": "bn3"}
BN_ATTR = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


class CountingStateDict(StateDict):
    """Counts how often each key is taken."""

    def __init__(self, mapping, **kwargs):
        super().__init__(mapping, **kwargs)
        self.counts = {}

    def take(self, key, shape=None):
        self.counts[key] = self.counts.get(key, 0) + 1
        return super().take(key, shape)


def backbone_keys(arch):
    path = require_shared(OFFICIAL_DIR / f"keys_GALD_{arch}_19cls.json")
    spec = json.loads(path.read_text())
    keys = [(k, tuple(shape), dtype) for k, shape, dtype in spec["keys"]]
    return [k for k in keys if not k[0].startswith(("head.", "dsn."))], keys


def keras_target(key):
    """(Keras layer name, attribute) for a backbone key in the current naming."""
    module, param = key.rsplit(".", 1)
    m = re.fullmatch(r"layer([1-4])\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])", module)
    if m:
        part = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(m[3], m[3])
        name = f"layer{m[1]}_block{m[2]}_{part}"
    else:
        name = NEW_STEM[module]
    is_conv = name.endswith("conv") or re.search(r"conv\d$", name)
    return name, ("kernel" if is_conv else BN_ATTR[param])


def assert_loaded(model, state, keys):
    """Every backbone key consumed once and landed on its Keras weight; every weight assigned."""
    assigned = set()
    for key, shape, _ in keys:
        if key.endswith("num_batches_tracked"):
            continue
        name, attr = keras_target(key)
        variable = getattr(model.get_layer(name), attr)
        expected = state[key].transpose(2, 3, 1, 0) if len(shape) == 4 else state[key]
        np.testing.assert_array_equal(variable.numpy(), expected, err_msg=key)
        assigned.add(variable.path)
    assert assigned == {v.path for v in model.weights}
    assert len(model.weights) == len([k for k, _, _ in keys if not k.endswith("num_batches_tracked")])


@pytest.fixture(scope="module")
def r50():
    return build_resnet("resnet50", output_stride=8, multi_grid=(1, 2, 4), stem="deep")


def test_r50_loads_every_key_once(r50):
    keys, all_keys = backbone_keys("res50")
    state = random_state_dict(all_keys)
    sd = CountingStateDict(state)
    report = load_official_resnet(r50, sd)
    backbone = {k for k, _, _ in keys}
    assert report.stem_format == "deep"
    assert set(report.loaded) == backbone
    taken = {k for k in backbone if not k.endswith("num_batches_tracked")}
    assert sd.counts == {k: 1 for k in taken}
    assert set(report.unused) == {k for k, _, _ in all_keys} - backbone  # head.* and dsn.*
    assert all(k.startswith(("head.", "dsn.")) for k in report.unused)
    assert_loaded(r50, state, keys)
    assert [tuple(o.shape) for o in r50.outputs] == [(None, None, None, 1024), (None, None, None, 2048)]


def test_r50_param_count_equals_key_sizes(r50):
    keys, _ = backbone_keys("res50")
    total = sum(int(np.prod(s)) for k, s, _ in keys if not k.endswith("num_batches_tracked"))
    assert r50.count_params() == total == 23_685_312


def test_r50_legacy_stem_names(r50):
    keys, _ = backbone_keys("res50")
    state = random_state_dict(keys, seed=1)

    def legacy(key):
        module, param = key.rsplit(".", 1)
        return f"{NEW_TO_LEGACY[module]}.{param}" if module in NEW_TO_LEGACY else key

    legacy_state = {legacy(k): v for k, v in state.items()}
    assert "conv2.weight" in legacy_state and legacy_state["bn1.weight"].shape == (64,)
    report = load_official_resnet(r50, legacy_state)
    assert report.stem_format == "deep_legacy"
    assert report.unused == []
    assert set(report.loaded) == set(legacy_state)
    assert_loaded(r50, state, keys)


def test_r50_module_prefix_fc_and_key_prefix(r50):
    keys, _ = backbone_keys("res50")
    state = random_state_dict(keys, seed=2)
    fc = {"fc.weight": np.zeros((1000, 2048), np.float32), "fc.bias": np.zeros(1000, np.float32)}
    wrapped = {f"module.{k}": v for k, v in {**state, **fc}.items()}
    report = load_official_resnet(r50, StateDict(wrapped))
    assert report.unused == ["fc.bias", "fc.weight"]
    assert_loaded(r50, state, keys)

    state = random_state_dict(keys, seed=3)
    prefixed = {f"backbone.{k}": v for k, v in state.items()}
    prefixed["classifier.weight"] = np.zeros((3, 3), np.float32)
    sd = StateDict(prefixed)
    report = load_official_resnet(r50, sd, prefix="backbone.")
    assert report.unused == [] and sd.unused() == ["classifier.weight"]
    assert_loaded(r50, state, keys)


def test_r50_errors_name_the_key(r50):
    keys, _ = backbone_keys("res50")
    state = random_state_dict(keys, seed=4)
    bad = dict(state, **{"layer2.0.conv2.weight": np.zeros((128, 128, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"layer2\.0\.conv2\.weight"):
        load_official_resnet(r50, bad)
    bad = dict(state, **{"layer3.1.bn2.running_var": np.ones(255, np.float32)})
    with pytest.raises(ValueError, match=r"layer3\.1\.bn2\.running_var"):
        load_official_resnet(r50, bad)
    missing = {k: v for k, v in state.items() if k != "layer3.5.bn2.running_var"}
    with pytest.raises(KeyError, match=r"layer3\.5\.bn2\.running_var"):
        load_official_resnet(r50, missing)
    no_stem = {k: v for k, v in state.items() if not k.startswith(("conv1.", "bn1."))}
    with pytest.raises(ValueError, match="no deep-stem keys"):
        load_official_resnet(r50, no_stem)


def test_depth_and_stem_mismatches_are_errors(r50):
    keys101, _ = backbone_keys("res101")
    with pytest.raises(ValueError, match=r"no Keras counterpart.*: 306 keys in layer3\.6, layer3\.7, .*layer3\.22$"):
        load_official_resnet(r50, random_state_dict(keys101))
    classic = build_resnet("resnet50", stem="classic")
    keys50, _ = backbone_keys("res50")
    with pytest.raises(ValueError, match="stem='classic'"):
        load_official_resnet(classic, random_state_dict(keys50))


def test_r101_loads_every_key_once():
    keys, all_keys = backbone_keys("res101")
    model = build_resnet("resnet101", output_stride=8, multi_grid=(1, 2, 4), stem="deep")
    total = sum(int(np.prod(s)) for k, s, _ in keys if not k.endswith("num_batches_tracked"))
    assert model.count_params() == total == 42_729_664
    state = random_state_dict(all_keys, seed=5)
    sd = CountingStateDict(state)
    report = load_official_resnet(model, sd)
    backbone = {k for k, _, _ in keys}
    assert set(report.loaded) == backbone
    assert sd.counts == {k: 1 for k in backbone if not k.endswith("num_batches_tracked")}
    assert all(k.startswith(("head.", "dsn.")) for k in report.unused)
    assert_loaded(model, state, keys)
    dilations = [model.get_layer(f"layer4_block{b}_conv2").dilation_rate[0] for b in range(3)]
    assert dilations == [4, 8, 16]
    assert {model.get_layer(f"layer3_block{b}_conv2").dilation_rate[0] for b in range(23)} == {2}


def to_torch_state_dict(model, layer_prefix=""):
    """Inverse mapping: a Keras tiny backbone -> authors'-style keys (OIHW)."""
    inverse = {v: k for k, v in NEW_STEM.items()}
    state = {}
    for layer in model.layers:
        name = layer.name[len(layer_prefix):]
        if not layer.weights:
            continue
        m = re.fullmatch(r"layer([1-4])_block(\d+)_(conv\d|bn\d|downsample_conv|downsample_bn)", name)
        if m:
            part = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(m[3], m[3])
            module = f"layer{m[1]}.{m[2]}.{part}"
        else:
            module = inverse[name]
        if hasattr(layer, "kernel"):
            state[f"{module}.weight"] = layer.kernel.numpy().transpose(3, 2, 0, 1)
        else:
            for param, attr in BN_ATTR.items():
                state[f"{module}.{param}"] = getattr(layer, attr).numpy()
            state[f"{module}.num_batches_tracked"] = np.array(3, np.int64)
    return state


def test_tiny_round_trip_through_torch_layout_into_prefixed_model(tmp_path):
    rng = np.random.default_rng(7)
    source = build_resnet("resnet_small", output_stride=8, multi_grid=(1, 2, 4))
    for layer in source.layers:
        if hasattr(layer, "moving_variance"):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                               rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c)])
    state = to_torch_state_dict(source)
    path = tmp_path / "small.npz"
    np.savez(path, **state)
    assert set(read_state_dict(path)) == set(state)
    target = build_resnet("resnet_small", output_stride=8, multi_grid=(1, 2, 4), name_prefix="backbone_")
    report = load_official_resnet_file(target, path)
    assert report.unused == [] and report.layers[0] == "backbone_stem_conv1"
    x = rng.normal(size=(1, 41, 37, 3)).astype("float32")
    for a, e in zip(target(x, training=False), source(x, training=False)):
        np.testing.assert_array_equal(a.numpy(), e.numpy())
    with pytest.raises(FileNotFoundError, match="not found"):
        load_official_resnet_file(target, tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="unsupported checkpoint format"):
        read_state_dict(__file__)
