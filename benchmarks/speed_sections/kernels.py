"""Single layers and kernels, apart from the networks they sit in.

`ldv2_block`: the LDv2 layer alone (default config, `--ldv2-size` map, X_g 256
+ X_l 256 = 512 input channels, batch 1), forward and forward + backward, graph
and XLA: `impl="slices"` (the default, its primitives XLA-compiled inside the
graph, `jit_slices=True`), `slices_plain` (`jit_slices=False`, plain TF ops)
and `impl="patches"` (the `extract_patches` reference), with ratios over the
default; the PyTorch twin's LDv2 beside them.

`dilated_conv`: one 3x3 conv of ASPP's shape (`--dilated-channels`, SAME) at
rates 1/2/12/24/36 on the 1/8 map of the forward image (batch 1) and of the
training crop: `dilated_conv2d(method="conv")` (hand-written gradient),
`method="taps"` (one matmul per tap over the region it reads),
`method="winograd"` (F(2x2, 3x3)) and, at rate 1, TF's own gradient; which one
`method="auto"` picks in a graph; forward and forward + backward; PyTorch's
conv alongside. These rows are the evidence for `keras_gald.layers.conv`'s
dispatch (benchmarks/README.md, "Dispatch per machine").
"""

import numpy as np

from common.models import ldv2_layer_fns
from common.report import log, write_json
from common.timing import sync_tf, time_calls


def measure_ldv2_block(args, torch, torch_ref, results):
    import tensorflow as tf

    from keras_gald.layers.ldv2 import LDv2

    rows = []
    s = args.ldv2_size
    rng = np.random.default_rng(0)
    xg = tf.constant(rng.standard_normal((1, s, s, 256)), tf.float32)
    xl = tf.constant(rng.standard_normal((1, s, s, 256)), tf.float32)
    # "slices": the default (its primitives XLA-compiled inside the graph);
    # "slices_plain": jit_slices=False, plain TF ops (what exports trace).
    layers = {
        "slices": LDv2(impl="slices", name="ldv2_slices"),
        "slices_plain": LDv2(impl="slices", jit_slices=False, name="ldv2_slices_plain"),
        "patches": LDv2(impl="patches", name="ldv2_patches"),
    }
    for layer in layers.values():
        layer.build([tuple(xg.shape), tuple(xl.shape)])
        layer.set_weights(layers["slices"].get_weights())

    def make(layer, backward):
        forward, forward_backward = ldv2_layer_fns(layer)
        return forward_backward if backward else forward

    for pass_name in ("fwd", "fwd+bwd"):
        for jit in (False, True):
            mode = "fp32_xla" if jit else "fp32"
            times = {}
            for impl, layer in layers.items():
                fn = tf.function(make(layer, pass_name == "fwd+bwd"), jit_compile=jit)
                log(f"[ldv2_block] {impl} {pass_name} {mode} 1x{s}x{s}x512 ...")
                try:
                    timing = time_calls(lambda: sync_tf(fn(xg, xl)), args.warmup, args.repeats)
                except Exception as exc:  # noqa: BLE001
                    log(f"    FAILED: {type(exc).__name__}: {str(exc)[:200]}")
                    rows.append(dict(impl=impl, pass_=pass_name, mode=mode,
                                     error=str(exc)[:300]))
                    continue
                times[impl] = timing["ms"]
                rows.append(dict(impl=impl, pass_=pass_name, mode=mode,
                                 input=f"1x{s}x{s}x(256+256)", **timing))
                log(f"    {timing['ms']:.1f} ms")
            for other in ("patches", "slices_plain"):
                if "slices" in times and other in times:
                    rows.append(dict(impl=f"{other}/slices", pass_=pass_name, mode=mode,
                                     ratio=times[other] / times["slices"]))
    if torch is not None:
        torch.manual_seed(0)
        block = torch_ref.LDv2(256, 256).to(memory_format=torch.channels_last)
        a = torch.randn(1, 256, s, s).contiguous(memory_format=torch.channels_last)
        b = torch.randn(1, 256, s, s).contiguous(memory_format=torch.channels_last)

        def torch_fwd():
            with torch.inference_mode():
                block.eval()(a, b)

        def torch_fwd_bwd():
            a_ = a.detach().requires_grad_()
            b_ = b.detach().requires_grad_()
            block.train()(a_, b_).square().sum().backward()

        for pass_name, fn in (("fwd", torch_fwd), ("fwd+bwd", torch_fwd_bwd)):
            log(f"[ldv2_block] torch (slices) {pass_name} 1x{s}x{s}x512 ...")
            timing = time_calls(fn, args.warmup, args.repeats)
            rows.append(dict(impl="torch_slices", pass_=pass_name, mode="torch_eager",
                             input=f"1x{s}x{s}x(256+256)", **timing))
            log(f"    {timing['ms']:.1f} ms")
    results["ldv2_block"] = rows
    write_json(args.json, results)


def measure_dilated_conv(args, torch, results):
    """One 3x3 conv of ASPP's shape (C_in -> C_out, SAME) per rate, on the 1/8 map
    of a `--size` image (batch 1) and of a `--train-size` crop (batch
    `--train-batch`), forward and forward + backward (input and kernel
    gradients): `dilated_conv2d(method="conv")` (tf.nn.conv2d forward,
    hand-written gradient), `method="taps"` (one matmul per tap over the region
    it reads), `method="winograd"` (F(2x2, 3x3)) and, at rate 1, `tf`
    (tf.nn.conv2d with TF's own gradient; TF's CPU backprop kernels reject
    rates > 1); which one `method="auto"` picks in a graph; PyTorch's conv
    alongside."""
    import tensorflow as tf

    from keras_gald.ops.conv import auto_method, dilated_conv2d, taps_fraction

    c_in, c_out = (int(v) for v in args.dilated_channels.split(","))
    rows = []
    maps = [(1, args.size // 8), (args.train_batch, args.train_size // 8)]
    for batch, side in maps:
        x = tf.random.normal((batch, side, side, c_in), seed=0)
        k = tf.random.normal((3, 3, c_in, c_out), seed=1) * 0.02
        for rate in (1, 2, 12, 24, 36):
            fraction = taps_fraction(side, side, (3, 3), (rate, rate))
            label = f"{batch}x{side}x{side}x{c_in}->{c_out} r{rate}"
            convs = {
                "conv": lambda x, k, r=rate: dilated_conv2d(x, k, (r, r), "SAME", method="conv"),
                "taps": lambda x, k, r=rate: dilated_conv2d(x, k, (r, r), "SAME", method="taps"),
                "winograd": lambda x, k, r=rate: dilated_conv2d(x, k, (r, r), "SAME",
                                                                method="winograd"),
            }
            if rate == 1:
                convs["tf"] = lambda x, k: tf.nn.conv2d(x, k, 1, "SAME")
            for pass_name in ("fwd", "fwd+bwd"):
                times = {}
                for method, conv in convs.items():
                    def run(x, k, conv=conv, backward=pass_name == "fwd+bwd"):
                        if not backward:
                            return conv(x, k)
                        with tf.GradientTape() as tape:
                            tape.watch([x, k])
                            y = conv(x, k)
                            loss = tf.reduce_sum(y * y)
                        return tape.gradient(loss, [x, k])

                    fn = tf.function(run)
                    log(f"[dilated_conv] {method} {pass_name} {label} ...")
                    timing = time_calls(lambda: sync_tf(fn(x, k)), args.warmup, args.repeats)
                    times[method] = timing["ms"]
                    log(f"    {timing['ms']:.1f} ms")
                if torch is not None:
                    conv_t = torch.nn.Conv2d(c_in, c_out, 3, padding=rate, dilation=rate,
                                             bias=False).to(memory_format=torch.channels_last)
                    xt = torch.randn(batch, c_in, side, side).contiguous(
                        memory_format=torch.channels_last)

                    def torch_call(backward=pass_name == "fwd+bwd"):
                        if not backward:
                            with torch.inference_mode():
                                conv_t(xt)
                            return
                        x_ = xt.detach().requires_grad_()
                        conv_t(x_).square().sum().backward()

                    times["torch_eager"] = time_calls(torch_call, args.warmup,
                                                      args.repeats)["ms"]
                    log(f"    torch {times['torch_eager']:.1f} ms")
                auto = auto_method(side, side, k.shape, (rate, rate), "SAME", tf.float32,
                                   batch=batch)
                rows.append(dict(pass_=pass_name, rate=rate, input=label, taps_fraction=fraction,
                                 ms=times, auto=auto,
                                 conv_over_taps=times["conv"] / times["taps"],
                                 winograd_over_conv=times["winograd"] / times["conv"],
                                 auto_over_torch=(times[auto] / times["torch_eager"]
                                                  if "torch_eager" in times else None)))
    results["dilated_conv"] = rows
    write_json(args.json, results)
