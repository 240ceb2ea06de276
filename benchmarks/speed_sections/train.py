"""Training: the whole step, its conv and BN layers alone, the optimizer alone.

`train`: one SGD step (`keras_gald.optimizers.SGD`, momentum 0.9;
cross-entropy with ignore label 255 plus 0.4 x the auxiliary head's loss when
the model has one, i.e. `Segmenter.compile` defaults) at `--train-batch` x
`--train-size`^2 via `model.train_on_batch` (`compile(jit_compile=...)` for
`fp32_xla`), per mode and `--train-configs` network (official_v1 needs >= 111
pixels, so it trains at 128 even when `--train-size` is smaller); timed in
turns with the PyTorch twin's step, one untimed settling step before each
timed one (`common.timing.time_interleaved`).

`train_layers`: every distinct conv and BatchNorm layer of those networks at
the training crop, forward + backward, in turns: the library's layer
(the library Conv2D's hand-written gradients, FusedBatchNormalization), the stock
Keras layer of the same config (TF's gradients) and PyTorch's; totals per kind
(1x1, 3x3 rate 1, dilated, strided, BN) weighted by how often each occurs.

`optimizer`: one SGD update (momentum 0.9) of all trainable weights:
`keras.optimizers.SGD`, `keras_gald.optimizers.SGD` (fused TF kernel) and
`torch.optim.SGD`.
"""

import gc
import json

import numpy as np

from common.models import (CONFIGS, IGNORE_INDEX, build_keras, build_torch,
                           fresh_session, random_labels, set_policy, torch_variants,
                           train_size)
from common.report import log, write_json
from common.timing import sync_tf, time_interleaved
from speed_sections.twins import attach_torch_ratios, time_with_twins, torch_row


def measure_train(args, torch, torch_ref, results):
    import tensorflow as tf

    from keras_gald.losses import SegmentationCrossEntropy
    from keras_gald.optimizers import SGD

    rows = results.setdefault("train", [])
    rng = np.random.default_rng(0)
    for name in args.train_configs:
        cfg = CONFIGS[name]
        size = train_size(args, cfg)
        batch = args.train_batch
        images_np = rng.random((batch, size, size, 3), dtype=np.float32)
        labels_np = random_labels(rng, batch, size, size)
        images, labels = tf.constant(images_np), tf.constant(labels_np)
        torch_job, torch_stats = None, {}
        if torch is not None:
            try:
                torch_job = _torch_train_job(args, torch, torch_ref, cfg, images_np, labels_np)
            except Exception as exc:  # noqa: BLE001
                log(f"    PyTorch model failed: {type(exc).__name__}: {exc}")
        for mode in args.modes:
            log(f"[train] {name} {mode} {batch}x{size}x{size} ...")
            row = dict(config=name, mode=mode, input=f"{batch}x{size}x{size}")
            set_policy(mode)
            try:
                model = build_keras(cfg, size, size)
                model.compile(
                    optimizer=SGD(learning_rate=1e-3, momentum=0.9),
                    loss=SegmentationCrossEntropy(ignore_index=IGNORE_INDEX),
                    jit_compile=mode == "fp32_xla",
                )
                row["jit_compile"] = bool(model.jit_compile)
                row["aux_loss"] = getattr(model, "aux_loss", None) is not None

                def keras_step(model=model):
                    model.train_on_batch(images, labels)

                torch_stats.update(time_with_twins(args, row, keras_step, torch_job, settle=1))
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                log(f"    FAILED: {row['error']}")
            finally:
                set_policy("fp32")
                model = None
                fresh_session()
            rows.append(row)
            if "ms" in row:
                log(f"    {row['ms']:.1f} ms/step (first call {row['first_ms']:.0f} ms)")
        if torch_job is not None:
            for mode, step in torch_job["fns"].items():
                rows.append(torch_row(args, "train", name, mode, f"{batch}x{size}x{size}",
                                       step, torch_stats))
            attach_torch_ratios(rows, name, f"{batch}x{size}x{size}")
            del torch_job
            gc.collect()
        write_json(args.json, results)


def _torch_train_job(args, torch, torch_ref, cfg, images_np, labels_np):
    """`{"fns": {mode: one SGD step}}` for the PyTorch twin of `cfg` (eager
    channels-last, plus `torch.compile` with `--torch-compile`)."""
    torch.manual_seed(0)
    model = build_torch(torch_ref, cfg).train().to(memory_format=torch.channels_last)
    images = torch.from_numpy(images_np).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    labels = torch.from_numpy(labels_np).long()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    variants = torch_variants(args, torch, model)

    def make_step(net, bf16):
        def step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                outputs = net(images)
            loss = torch_ref.segmentation_loss(outputs, labels, IGNORE_INDEX, 0.4)
            loss.backward()
            optimizer.step()
            return loss.item()

        return step

    return dict(fns={mode: make_step(net, bf16) for mode, net, bf16 in variants}, model=model)


def _layer_kind(layer):
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return "batchnorm"
    k, s, d = tuple(layer.kernel_size), tuple(layer.strides), tuple(layer.dilation_rate)
    if max(s) > 1:
        return "strided conv"
    if k == (1, 1):
        return "1x1 conv"
    return f"{k[0]}x{k[1]} conv rate 1" if max(d) == 1 else f"{k[0]}x{k[1]} conv dilated"


def _train_layer_specs(model, batch):
    """`{key: spec}` for every conv / BN layer of `model` with a functional
    input (layers inside subclassed blocks are not reachable and are counted
    in `skipped`), deduplicated by class, config and input shape."""
    import keras

    from keras_gald.layers.conv import Conv2D

    specs, skipped = {}, 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.BatchNormalization)):
            continue
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, Conv2D):
            continue
        try:
            shape = (batch, *layer.input.shape[1:])
        except (AttributeError, ValueError):
            skipped += 1
            continue
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
        key = json.dumps([type(layer).__name__, shape, config], sort_keys=True, default=str)
        spec = specs.setdefault(key, dict(layer=layer, shape=shape, count=0,
                                          kind=_layer_kind(layer)))
        spec["count"] += 1
    return specs, skipped


def _torch_twin_layer(torch, layer, shape):
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return torch.nn.BatchNorm2d(shape[-1], eps=layer.epsilon, momentum=1 - layer.momentum)
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
    if layer.padding == "same":
        if max(sh, sw) > 1 or kh % 2 == 0 or kw % 2 == 0:
            return None  # TF's asymmetric "same" has no PyTorch twin
        padding = (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
    else:
        padding = 0
    return torch.nn.Conv2d(shape[-1], layer.filters, (kh, kw), stride=(sh, sw), padding=padding,
                           dilation=(dh, dw), groups=layer.groups, bias=layer.use_bias)


def measure_train_layers(args, torch, results):
    """Forward + backward (input and weight gradients, loss sum(y^2)) of each
    distinct conv and BatchNorm layer of the training configurations at the
    training crop, in turns: the library's layer (`ours`: the library's Conv2D with
    its hand-written gradients, FusedBatchNormalization), the stock Keras
    layer of the same config (`keras`: Conv2D / BatchNormalization with TF's
    own gradients) and PyTorch's (`torch_eager`, channels-last, train mode).
    Totals per layer kind are weighted by how often each layer occurs."""
    import keras
    import tensorflow as tf

    rows, totals = [], []
    for name in args.train_configs:
        cfg = CONFIGS[name]
        size = train_size(args, cfg)
        model = build_keras(cfg, size, size)
        specs, skipped = _train_layer_specs(model, args.train_batch)
        log(f"[train_layers] {name} {args.train_batch}x{size}x{size}: {len(specs)} distinct "
            f"conv/BN layers ({skipped} inside subclassed blocks not timed)")
        sums = {}
        for spec in specs.values():
            layer, shape = spec["layer"], spec["shape"]
            config = layer.get_config()
            stock_cls = (keras.layers.BatchNormalization
                         if isinstance(layer, keras.layers.BatchNormalization)
                         else keras.layers.Conv2D)
            impls = {"ours": type(layer).from_config(config),
                     "keras": stock_cls.from_config(config)}
            x = tf.random.normal(shape, seed=0)
            fns = {}
            for impl, lyr in impls.items():
                lyr.build(shape)

                @tf.function
                def fwd_bwd(x, lyr=lyr):
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        y = lyr(x, training=True)
                        loss = tf.reduce_sum(y * y)
                    return tape.gradient(loss, [x, *lyr.trainable_weights])

                fns[impl] = lambda fn=fwd_bwd: sync_tf(fn(x))
            twin = _torch_twin_layer(torch, layer, shape) if torch is not None else None
            if twin is not None:
                twin = twin.train().to(memory_format=torch.channels_last)
                xt = torch.randn(shape[0], shape[3], shape[1], shape[2]).contiguous(
                    memory_format=torch.channels_last).requires_grad_()

                def torch_call(twin=twin, xt=xt):
                    twin.zero_grad(set_to_none=True)
                    xt.grad = None
                    twin(xt).square().sum().backward()

                fns["torch_eager"] = torch_call
            # settle: PyTorch's OpenMP threads spin on after its call and slow
            # the next few milliseconds of TF work, which is all a layer takes.
            stats, _ = time_interleaved(fns, args.warmup, args.repeats, settle=1)
            ms = {impl: st["ms"] for impl, st in stats.items()}
            desc = (f"BN {shape}" if spec["kind"] == "batchnorm" else
                    f"conv {layer.kernel_size[0]}x{layer.kernel_size[1]} s{layer.strides[0]} "
                    f"r{layer.dilation_rate[0]} {layer.padding} {shape}->{layer.filters}")
            rows.append(dict(config=name, kind=spec["kind"], layer=desc, count=spec["count"],
                             ms=ms))
            kind_sums = sums.setdefault(spec["kind"], {"count": 0})
            kind_sums["count"] += spec["count"]
            for impl, t in ms.items():
                kind_sums[impl] = kind_sums.get(impl, 0.0) + spec["count"] * t
            log(f"    {desc} x{spec['count']}: " + "  ".join(f"{k} {v:.2f}" for k, v in ms.items()))
        for kind, kind_sums in sorted(sums.items()):
            totals.append(dict(config=name, kind=kind, **kind_sums))
        model = None
        fresh_session()
    results["train_layers"] = rows
    results["train_layers_totals"] = totals
    write_json(args.json, results)


def measure_optimizer(args, torch, torch_ref, results):
    """One SGD update (momentum 0.9) of every trainable weight of the training
    configurations, in turns: `keras.optimizers.SGD` (Keras' element-wise
    ops), `keras_gald.optimizers.SGD` (TF's fused ResourceApplyKerasMomentum,
    what the library's training uses) and `torch.optim.SGD` (its default
    multi-tensor update) on the PyTorch twin."""
    import keras
    import tensorflow as tf

    from keras_gald.optimizers import SGD

    rows = []
    for name in args.train_configs:
        cfg = CONFIGS[name]
        size = train_size(args, cfg)
        model = build_keras(cfg, size, size)
        weights = model.trainable_variables
        count = int(sum(np.prod(w.shape) for w in weights))
        grads = [tf.random.normal(w.shape, seed=i) * 1e-3 for i, w in enumerate(weights)]
        fns = {}
        for impl, cls in (("keras", keras.optimizers.SGD), ("ours", SGD)):
            optimizer = cls(learning_rate=1e-3, momentum=0.9)
            optimizer.build(weights)
            apply = tf.function(lambda opt=optimizer: opt.apply(grads, weights))
            fns[impl] = lambda apply=apply: apply()
        if torch is not None:
            twin = build_torch(torch_ref, cfg)
            params = [p for p in twin.parameters() if p.requires_grad]
            for p in params:
                p.grad = torch.randn_like(p) * 1e-3
            torch_opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
            fns["torch_eager"] = torch_opt.step
        log(f"[optimizer] {name}: {count / 1e6:.1f} M weights in {len(weights)} variables ...")
        stats, _ = time_interleaved(fns, args.warmup, args.repeats, settle=1)
        ms = {impl: st["ms"] for impl, st in stats.items()}
        log("    " + "  ".join(f"{k} {v:.1f} ms" for k, v in ms.items()))
        rows.append(dict(config=name, weights=count, variables=len(weights), ms=ms))
        model = None
        fresh_session()
    results["optimizer"] = rows
    write_json(args.json, results)
