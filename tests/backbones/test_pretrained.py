"""ImageNet backbone weights from the files users have (keras_gald.backbones.pretrained).

State dicts are generated from the architecture tables (torchvision / timm / the authors'
key names, independent of the loader's own plan), filled with random values, written in each
file format (PyTorch zip and legacy `.pth` without PyTorch, `.npz`, `.safetensors`, Keras 2
`.h5`) and checked key by key against the Keras variables after loading.
"""

import json
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import keras
import numpy as np
import pytest

from keras_gald.backbones import BACKBONES, build_resnet
from keras_gald.backbones.checkpoint_files import read_tensors
from keras_gald.backbones.pretrained import load_backbone_weights
from keras_gald.models import GALD
from tests.backbones._torch_files import save_legacy, save_zip

BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
      "running_var": "moving_variance"}
DEEP_STEM = {"conv1.0": "stem_conv1", "conv1.1": "stem_bn1", "conv1.3": "stem_conv2",
             "conv1.4": "stem_bn2", "conv1.6": "stem_conv3", "bn1": "stem_bn3"}
CLASSIC_STEM = {"conv1": "stem_conv1", "bn1": "stem_bn1"}


def torch_resnet_keys(arch, stem, fc=True):
    """[(key, shape)] of a torchvision-style ResNet state dict ("deep": the authors' stem)."""
    spec = BACKBONES[arch]
    w = spec.stem_width
    keys = []

    def conv(name, o, i, k):
        keys.append((f"{name}.weight", (o, i, k, k)))

    def bn(name, c):
        keys.extend((f"{name}.{p}", (c,)) for p in ("weight", "bias", "running_mean", "running_var"))
        keys.append((f"{name}.num_batches_tracked", ()))

    if stem == "deep":
        conv("conv1.0", w, 3, 3), bn("conv1.1", w), conv("conv1.3", w, w, 3), bn("conv1.4", w)
        conv("conv1.6", 2 * w, w, 3), bn("bn1", 2 * w)
        inplanes = 2 * w
    else:
        conv("conv1", w, 3, 7), bn("bn1", w)
        inplanes = w
    for stage, (n, planes) in enumerate(zip(spec.blocks, spec.planes), 1):
        out = planes * spec.expansion
        for b in range(n):
            p = f"layer{stage}.{b}"
            conv(f"{p}.conv1", planes, inplanes, 1), bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", out, planes, 1), bn(f"{p}.bn3", out)
            if b == 0:
                conv(f"{p}.downsample.0", out, inplanes, 1), bn(f"{p}.downsample.1", out)
            inplanes = out
    if fc:
        keys += [("fc.weight", (1000, inplanes)), ("fc.bias", (1000,))]
    return keys


def random_state(keys, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in keys:
        if key.endswith("num_batches_tracked"):
            out[key] = np.array(11, np.int64)
        elif key.endswith("running_var"):
            out[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            out[key] = rng.standard_normal(shape).astype(np.float32)
    return out


def keras_target(key):
    """(layer name, variable name) of a torchvision / authors' key (None: not a weight)."""
    module, param = key.rsplit(".", 1)
    if module == "fc" or param == "num_batches_tracked":
        return None
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])", module)
    if m:
        part = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(m[3], m[3])
        layer = f"layer{m[1]}_block{m[2]}_{part}"
    elif module == "bn1":
        layer = None  # resolved by the caller: stem_bn3 (deep) or stem_bn1 (classic)
    else:
        layer = {**DEEP_STEM, **CLASSIC_STEM}[module]
    return layer, ("kernel" if param == "weight" and ("conv" in (layer or "")) else BN.get(param))


def assert_torch_loaded(model, state, stem, prefix=""):
    variables = {}
    for layer in model.layers:
        for v in layer.weights:
            variables[(layer.name, v.name)] = v
    assigned = set()
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        target = keras_target(key[len(prefix):])
        if target is None:
            continue
        layer, attr = target
        if layer is None:
            layer = "stem_bn3" if stem == "deep" else "stem_bn1"
            attr = BN[key.rsplit(".", 1)[1]]
        if attr == "kernel":
            expected = value.transpose(2, 3, 1, 0)
        else:
            expected = value
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variables[(layer, attr)]),
                                      expected, err_msg=key)
        assigned.add((layer, attr))
    assert assigned == set(variables), set(variables) - assigned  # every backbone weight set


@pytest.mark.parametrize("stem, writer", [
    ("deep", "zip"), ("deep", "legacy"), ("classic", "zip"), ("classic", "npz"),
    ("classic", "safetensors"),
])
def test_state_dict_files_load_key_by_key(tmp_path, stem, writer):
    state = random_state(torch_resnet_keys("resnet_tiny", stem))
    path = tmp_path / {"zip": "w.pth", "legacy": "w.pth", "npz": "w.npz",
                       "safetensors": "w.safetensors"}[writer]
    if writer == "zip":
        save_zip(path, state)
    elif writer == "legacy":
        save_legacy(path, state)
    elif writer == "npz":
        np.savez(path, **state)
    else:
        write_safetensors(path, state)
    kind, read = read_tensors(path)
    assert kind == "torch" and set(read) == set(state)
    for key in state:
        assert read[key].shape == state[key].shape and read[key].dtype == state[key].dtype, key
        np.testing.assert_array_equal(read[key], state[key])
    model = build_resnet("resnet_tiny", stem=stem)
    report = load_backbone_weights(model, path)
    assert report.format == f"torch_{stem}"
    assert_torch_loaded(model, state, stem)
    weights = [k for k in state if keras_target(k) is not None]
    assert sorted(report.loaded) == sorted(weights)
    assert sorted(report.skipped) == sorted(set(state) - set(weights))  # fc + num_batches_tracked
    assert report.mismatched == [] and report.missing == []
    assert f"loaded {len(weights)} tensors" in report.summary()


def write_safetensors(path, state):
    header, blobs, offset = {}, [], 0
    for key, value in state.items():
        raw = np.ascontiguousarray(value).tobytes()
        dtype = {np.float32: "F32", np.int64: "I64"}[value.dtype.type]
        header[key] = {"dtype": dtype, "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(np.uint64(len(text)).tobytes() + text + b"".join(blobs))


def test_real_torchvision_resnet50_key_list():
    keys = torch_resnet_keys("resnet50", "classic")
    assert len(keys) == 320  # torchvision resnet50().state_dict()
    assert dict(keys)["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert len(torch_resnet_keys("resnet101", "classic")) == 626


def test_prefixes_wrappers_and_gald(tmp_path):
    state = random_state(torch_resnet_keys("resnet_tiny", "deep"))
    wrapped = {f"module.backbone.{k}": v for k, v in state.items()}
    wrapped["module.head.conv.weight"] = np.zeros((2, 2, 1, 1), np.float32)
    path = tmp_path / "gald.pth"
    save_zip(path, wrapped)
    model = GALD("resnet_tiny", num_classes=3, head_channels=8, aspp_filters=8,
                 backbone_weights=str(path))
    report = model.backbone_weights_report
    assert report.format == "torch_deep" and "module.head.conv.weight" in report.skipped
    assert_torch_loaded(model.get_layer("resnet_tiny"), wrapped, "deep", prefix="module.backbone.")


def test_strict_errors_and_lenient_report(tmp_path):
    state = random_state(torch_resnet_keys("resnet_tiny", "classic"))
    path = tmp_path / "tv.npz"
    np.savez(path, **state)
    with pytest.raises(ValueError, match=r"tv\.npz has a classic 7x7 stem.*stem='classic'"):
        build_resnet("resnet_tiny", stem="deep", weights=str(path))
    deeper = random_state(torch_resnet_keys("resnet_small", "classic"))
    np.savez(tmp_path / "small.npz", **deeper)
    with pytest.raises(ValueError, match=r"backbone key\(s\) with no layer.*layer1\.1\.bn1"):
        build_resnet("resnet_tiny", stem="classic", weights=str(tmp_path / "small.npz"))
    broken = dict(state)
    del broken["layer2.0.conv2.weight"]
    broken["layer3.0.bn1.weight"] = np.zeros(5, np.float32)
    np.savez(tmp_path / "broken.npz", **broken)
    with pytest.raises(ValueError, match=r"1 missing key\(s\): layer2\.0\.conv2\.weight.*"
                                         r"layer3\.0\.bn1\.weight file \(5,\) model \(16,\)"):
        build_resnet("resnet_tiny", stem="classic", weights=str(tmp_path / "broken.npz"))
    model = build_resnet("resnet_tiny", stem="classic", weights=str(tmp_path / "broken.npz"),
                         weights_strict=False)
    report = model.weights_report
    assert report.missing == ["layer2.0.conv2.weight"]
    assert report.mismatched == [("layer3.0.bn1.weight", (5,), (16,))]
    np.testing.assert_array_equal(model.get_layer("layer3_block0_bn1").beta.numpy(),
                                  state["layer3.0.bn1.bias"])  # the rest of the layer loads
    assert "mismatched 1 (layer3.0.bn1.weight)" in report.summary()
    with pytest.raises(ValueError, match="not a ResNet state dict"):
        np.savez(tmp_path / "other.npz", w=np.zeros(3))
        build_resnet("resnet_tiny", weights=str(tmp_path / "other.npz"))


def keras_applications_h5(path, model):
    """Writes `model`'s weights as Keras 2 HDF5 (the keras.applications download format)."""
    with h5py.File(path, "w") as f:
        names = [layer.name for layer in model.layers]
        f.attrs["layer_names"] = [n.encode() for n in names]
        f.attrs["backend"] = b"tensorflow"
        for layer in model.layers:
            g = f.create_group(layer.name)
            weight_names = [f"{layer.name}/{v.name}:0".encode() for v in layer.weights]
            g.attrs["weight_names"] = weight_names
            for name, v in zip(weight_names, layer.weights):
                g.create_dataset(name.decode(), data=keras.ops.convert_to_numpy(v))


def test_keras_applications_resnet50_h5(tmp_path):
    keras.utils.set_random_seed(0)
    source = keras.applications.ResNet50(weights=None, include_top=False,
                                         input_shape=(64, 64, 3))
    for layer in source.layers:  # non-trivial BN statistics and conv biases (zeros at init)
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.random.default_rng(1).normal(size=n))
            layer.moving_variance.assign(np.random.default_rng(2).uniform(0.5, 2, n))
        elif isinstance(layer, keras.layers.Conv2D):
            layer.bias.assign(np.random.default_rng(4).normal(size=layer.bias.shape[0]))
    path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    keras_applications_h5(path, source)
    model = build_resnet("resnet50", stem="classic", weights=str(path), output_stride=32)
    report = model.weights_report
    assert report.format == "keras_applications"
    assert report.missing == [] and report.mismatched == [] and report.skipped == []
    assert len(report.layers) == 106  # 53 conv + 53 BN
    src = {layer.name: layer for layer in source.layers}
    for layer in model.layers:
        m = re.fullmatch(r"layer(\d)_block(\d+)_(conv|bn)(\d)", layer.name)
        d = re.fullmatch(r"layer(\d)_block(\d+)_downsample_(conv|bn)", layer.name)
        if m:
            name = f"conv{int(m[1]) + 1}_block{int(m[2]) + 1}_{m[4]}_{m[3]}"
        elif d:
            name = f"conv{int(d[1]) + 1}_block{int(d[2]) + 1}_0_{d[3]}"
        elif layer.name in ("stem_conv1", "stem_bn1"):
            name = {"stem_conv1": "conv1_conv", "stem_bn1": "conv1_bn"}[layer.name]
        else:
            assert not layer.weights, layer.name
            continue
        ref = src[name]
        if isinstance(ref, keras.layers.Conv2D):
            np.testing.assert_array_equal(layer.kernel.numpy(), ref.kernel.numpy(), err_msg=name)
        else:
            conv = src[name[: -len("bn")] + "conv"]
            np.testing.assert_array_equal(layer.gamma.numpy(), ref.gamma.numpy())
            np.testing.assert_array_equal(layer.beta.numpy(), ref.beta.numpy())
            np.testing.assert_array_equal(layer.moving_variance.numpy(), ref.moving_variance.numpy())
            # the conv bias, folded into the mean
            np.testing.assert_allclose(layer.moving_mean.numpy(),
                                       ref.moving_mean.numpy() - conv.bias.numpy(), rtol=1e-6)
    # conv + bias + BN (Keras) == conv + folded BN (here) on the stem, in inference
    x = np.random.default_rng(3).uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)
    ref = keras.Model(source.input, source.get_layer("conv1_bn").output)(x)
    ours = keras.Model(model.input, model.get_layer("stem_bn1").output)(x)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-3, atol=2e-3)
