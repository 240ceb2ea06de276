"""The networks the benchmarks build: named configurations, their Keras builds
and PyTorch twins, and the dtype policy of each mode.

Configurations: `{tiny,r50,r101}_{backbone,fcn,aspp,aspp_ldv1,aspp_ldv2,cgnl_ldv1}`
(GALD factory, output stride 8, multi-grid (1, 2, 4), 19 classes; tiny =
`resnet_tiny` for smoke tests) and `official_v1_r{50,101}` (`official_gald_v1`,
logits upsampled to the input size). The PyTorch twins are
`benchmarks/torch_reference.py`, imported only when torch is.
"""

import gc
import math

import numpy as np

NUM_CLASSES = 19
IGNORE_INDEX = 255
MODES = ("fp32", "fp32_xla", "bf16", "fp16")
# Keras dtype policy of each mode (fp16: mixed_float16, for GPUs).
POLICIES = {"fp32": "float32", "fp32_xla": "float32", "bf16": "mixed_bfloat16",
            "fp16": "mixed_float16"}
# The PyTorch twins a Keras mode is timed in turns with (the first is the
# reference of its K/T ratios): fp32 against fp32, bf16 against bf16 autocast.
TORCH_TWINS = {"fp32": ("torch_eager", "torch_compile"), "bf16": ("torch_eager_bf16",)}


def _gald(backbone, ga, ld):
    return dict(kind="gald", backbone=backbone, ga=ga, ld=ld)


def _config_table():
    table = {}
    for short, backbone in (("tiny", "resnet_tiny"), ("r50", "resnet50"), ("r101", "resnet101")):
        table[f"{short}_backbone"] = dict(kind="backbone", backbone=backbone)
        table[f"{short}_fcn"] = _gald(backbone, None, None)
        table[f"{short}_aspp"] = _gald(backbone, "aspp", None)
        table[f"{short}_aspp_ldv1"] = _gald(backbone, "aspp", "v1")
        table[f"{short}_aspp_ldv2"] = _gald(backbone, "aspp", "v2")
        table[f"{short}_cgnl_ldv1"] = _gald(backbone, "cgnl", "v1")
    table["official_v1_r50"] = dict(kind="official_v1", depth=50)
    table["official_v1_r101"] = dict(kind="official_v1", depth=101)
    return table


CONFIGS = _config_table()
_VARIANTS = ("backbone", "fcn", "aspp", "aspp_ldv1", "aspp_ldv2", "cgnl_ldv1")
CONFIG_SETS = {
    "default": [f"r50_{v}" for v in _VARIANTS] + [f"r101_{v}" for v in _VARIANTS]
    + ["official_v1_r101"],
    "quick": [f"tiny_{v}" for v in _VARIANTS] + ["official_v1_r50"],
    "all": list(CONFIGS),
}
LARGE_CONFIG, LARGE_SIZE = "r101_aspp_ldv2", (1024, 2048)


def import_torch():
    """`(torch, torch_reference)` or `(None, reason)`."""
    try:
        import torch

        import torch_reference
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip torch"
        return None, f"{type(exc).__name__}: {exc}"
    return torch, torch_reference


def set_policy(mode):
    import keras

    keras.mixed_precision.set_global_policy(POLICIES[mode])


def fresh_session():
    import keras

    keras.backend.clear_session()
    gc.collect()


def min_input_size(cfg):
    if cfg["kind"] == "official_v1":
        from keras_gald.models.official import min_input_size as official_min

        return official_min()
    return 16


def train_size(args, cfg):
    """`--train-size`, or the next multiple of 32 at or above the config's
    minimum input (the official LDv1 needs >= 111)."""
    if args.train_size < min_input_size(cfg):
        return 32 * math.ceil(min_input_size(cfg) / 32)
    return args.train_size


def build_keras(cfg, height, width):
    """Builds the Keras network of `cfg` for static `(height, width)` inputs
    under the current dtype policy."""
    from keras_gald.backbones import build_resnet
    from keras_gald.models import GALD, official_gald_v1

    shape = (height, width, 3)
    if cfg["kind"] == "backbone":
        return build_resnet(cfg["backbone"], output_stride=8, multi_grid=(1, 2, 4),
                            stem="deep", input_shape=shape)
    if cfg["kind"] == "gald":
        return GALD(cfg["backbone"], ga=cfg["ga"], ld=cfg["ld"], num_classes=NUM_CLASSES,
                    output_stride=8, input_shape=shape)
    return official_gald_v1(cfg["depth"], num_classes=NUM_CLASSES, input_shape=shape,
                            upsample_logits=True)


def build_torch(torch_ref, cfg):
    """The PyTorch twin of `cfg` (`torch_ref` is the `torch_reference` module)."""
    if cfg["kind"] == "backbone":
        return torch_ref.build_torch_model("backbone", backbone=cfg["backbone"])
    if cfg["kind"] == "gald":
        return torch_ref.build_torch_model("gald", backbone=cfg["backbone"], ga=cfg["ga"],
                                           ld=cfg["ld"], num_classes=NUM_CLASSES)
    return torch_ref.build_torch_model("official_v1", depth=cfg["depth"],
                                       num_classes=NUM_CLASSES, upsample_logits=True)


def keras_param_counts(model):
    """`{"total", "aux", "main"}` trainable-weight counts of a Keras model.

    `main` is the inference graph (`Segmenter.inference_model()`), `aux` the
    rest (the training-only auxiliary head). Here rather than in
    `torch_reference` so that runs without PyTorch count parameters too.
    """
    count = lambda weights: int(sum(math.prod(w.shape) for w in weights))  # noqa: E731
    total = count(model.trainable_weights)
    inference = getattr(model, "inference_model", None)
    main = count(inference().trainable_weights) if inference else total
    return {"total": total, "aux": total - main, "main": main}


def inference_fn(model, jit=False):
    """`tf.function` running the model's inference graph (XLA-compiled with `jit`)."""
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False), jit_compile=jit)


def compile_torch(torch, model):
    """`torch.compile` with static shapes and a fresh Dynamo cache.

    Dynamo caches per code object (`Bottleneck.forward`, ...) across models:
    without a reset, a new input size marks dimensions dynamic (an Inductor
    error in LDv2's reductions) and after 8 recompilations it silently falls
    back to eager.
    """
    torch._dynamo.reset()
    return torch.compile(model, dynamic=False)


def torch_variants(args, torch, model):
    """`[(name, model, bf16)]` of the PyTorch twin to time: eager float32, plus
    `torch.compile` with `--torch-compile` and eager bfloat16 autocast with the bf16 mode."""
    variants = [("torch_eager", model, False)]
    if args.torch_compile:
        variants.append(("torch_compile", compile_torch(torch, model), False))
    if "bf16" in args.modes:
        variants.append(("torch_eager_bf16", model, True))
    return variants


def random_labels(rng, batch, height, width):
    """Random int32 class labels with about 5 % of the pixels `IGNORE_INDEX`."""
    labels = rng.integers(0, NUM_CLASSES, size=(batch, height, width)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.05] = IGNORE_INDEX  # some ignored pixels
    return labels


def ldv2_layer_fns(layer):
    """-> (forward, forward_backward) callables of an LD layer on inputs (xg, xl)."""
    import tensorflow as tf

    def forward(xg, xl):
        return layer([xg, xl], training=False)

    def forward_backward(xg, xl):
        with tf.GradientTape() as tape:
            tape.watch([xg, xl])
            loss = tf.reduce_sum(tf.square(layer([xg, xl], training=True)))
        return tape.gradient(loss, [xg, xl] + layer.trainable_weights)

    return forward, forward_backward
