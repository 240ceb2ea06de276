"""The GPU check on the JAX backend, for an accelerator machine without TensorFlow.

`gpu_check.sh` installs TensorFlow's CUDA build; where it cannot (no package index,
a CUDA JAX already installed), this script checks and times what runs on JAX.
It needs keras_gald, Keras 3, JAX with the accelerator's plugin and, for the speed
rows, PyTorch; not TensorFlow.

Checks, on the accelerator (each a row with its error and bound; the exit code is 1
if one fails):

* `conv`: `keras_gald.ops.conv2d` (3x3 at rates 1, 2 and 12, a strided 3x3, a 1x1)
  against a float64 NumPy convolution, at full float32 precision
  (`jax.default_matmul_precision("highest")`) and at the default precision (GPUs
  round float32 matmul inputs to TF32: its error is recorded, bounded loosely);
  the input gradient against the same computation on the CPU.
* `ldv2`: LDv2's fast path (`impl="slices"`) against the reference
  (`impl="patches"`): values and input gradients.
* `gald`: a small GALD network (ASPP + LDv2) on the accelerator against the same
  weights on the CPU; `mixed_float16` and `mixed_bfloat16` against float32.
* `fit`: three SGD steps with the OHEM loss: finite losses, weights moved.
* `save_load`: `.keras` round trip, same logits.

Speed (`--configs`, default R50 + ASPP and R50 + ASPP + LDv2 at 512x512, batch 1):
the forward pass as `jax.jit` of the inference graph, in turns with the PyTorch
twin in eager mode on the same device (`benchmarks/torch_reference.py`), for each
of `--modes` (fp32: default precision; bf16 / fp16: mixed precision, PyTorch
autocast), 1 warm-up + `--repeats` rounds. The paper's Table IV (V100, 512x512):
ASPP 65 ms, + LDv2 82 ms.

Usage:
    python benchmarks/jax_gpu_check.py --json benchmarks/results/jax_gpu_check.json
    python benchmarks/jax_gpu_check.py --device cpu --quick   # the same code on the CPU
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

os.environ["KERAS_BACKEND"] = "jax"
BENCH_DIR = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

PAPER_V100_MS = {"r50_aspp": 65.0, "r50_aspp_ldv2": 82.0}  # Table IV, 512x512


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                        help="where to run: the accelerator (auto: the GPU if JAX sees one)")
    parser.add_argument("--configs", default="r50_aspp,r50_aspp_ldv2",
                        help="networks to time (benchmarks/common/models.py names); '' for none")
    parser.add_argument("--modes", default="fp32,bf16,fp16")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-torch", action="store_true", help="time JAX only")
    parser.add_argument("--quick", action="store_true",
                        help="the checks only, at small sizes, plus the tiny network timed "
                             "at 64x64 (a smoke test of the script itself)")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.size, args.repeats, args.modes = "tiny_aspp_ldv2", 64, 2, "fp32"
    args.configs = [c for c in args.configs.split(",") if c]
    args.modes = [m for m in args.modes.split(",") if m]
    return args


def log(message):
    print(message, flush=True)


# ---------------------------------------------------------------- references


def numpy_conv(x, kernel, stride, rate):
    """float64 NHWC / HWIO convolution with TF's "SAME" padding."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    n, h, w, _ = x.shape
    kh, kw, _, c_out = kernel.shape
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + (kh - 1) * rate + 1 - h, 0)
    pad_w = max((out_w - 1) * stride + (kw - 1) * rate + 1 - w, 0)
    xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                    (0, 0)))
    out = np.zeros((n, out_h, out_w, c_out))
    for i in range(kh):
        for j in range(kw):
            window = xp[:, i * rate: i * rate + (out_h - 1) * stride + 1: stride,
                        j * rate: j * rate + (out_w - 1) * stride + 1: stride]
            out += window @ kernel[i, j]
    return out


def relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))


class Checks:
    """Rows `{"check", "error", "bound", "ok"}`; `failed` lists the failures."""

    def __init__(self):
        self.rows = []

    def add(self, name, error, bound, **extra):
        ok = bool(np.isfinite(error) and error <= bound)
        self.rows.append(dict(check=name, error=float(error), bound=bound, ok=ok, **extra))
        log(f"  {'ok  ' if ok else 'FAIL'} {name}: {error:.3g} (bound {bound:g})")

    def record(self, name, value, **extra):
        """A measured value with no bound (e.g. the TF32 error)."""
        self.rows.append(dict(check=name, value=float(value), ok=True, **extra))
        log(f"       {name}: {value:.3g}")

    def expect(self, name, condition, detail=""):
        self.rows.append(dict(check=name, ok=bool(condition), detail=detail))
        log(f"  {'ok  ' if condition else 'FAIL'} {name}{': ' + detail if detail else ''}")

    @property
    def failed(self):
        return [row["check"] for row in self.rows if not row["ok"]]


def on(device, tree):
    return jax.device_put(tree, device)


# ---------------------------------------------------------------- checks


def check_conv(checks, device, cpu, quick):
    from keras_gald.ops import conv2d

    rng = np.random.default_rng(0)
    size, channels = (20, 8) if quick else (48, 32)
    cases = [(3, 1, 1), (3, 1, 2), (3, 1, 12), (3, 2, 1), (1, 1, 1)]
    for k, stride, rate in cases:
        x = rng.normal(size=(2, size, size + 6, channels)).astype(np.float32)
        kernel = (rng.normal(size=(k, k, channels, channels + 4)) / (k * channels ** 0.5)
                  ).astype(np.float32)
        expected = numpy_conv(x, kernel, stride, rate)
        fn = jax.jit(lambda a, b, s=stride, r=rate: conv2d(a, b, s, "same", r))
        name = f"conv {k}x{k} stride {stride} rate {rate}"
        with jax.default_matmul_precision("highest"):
            checks.add(f"{name}: values, full fp32", relative_error(
                fn(*on(device, (x, kernel))), expected), 1e-5)
        checks.record(f"{name}: values, default precision",
                      relative_error(fn(*on(device, (x, kernel))), expected))
        cot = rng.normal(size=expected.shape).astype(np.float32)

        def loss(a, b, c, s=stride, r=rate):
            return jnp.sum(conv2d(a, b, s, "same", r) * c)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        with jax.default_matmul_precision("highest"):
            got = grad(*on(device, (x, kernel, cot)))
            ref = grad(*on(cpu, (x, kernel, cot)))
        checks.add(f"{name}: input and kernel gradients vs CPU", max(
            relative_error(got[0], ref[0]), relative_error(got[1], ref[1])), 1e-4)


def check_ldv2(checks, device, quick):
    from keras_gald.layers import LDv2

    rng = np.random.default_rng(1)
    h, w = (12, 15) if quick else (40, 52)
    kwargs = dict(kernel_size=5, dilation_rate=3, key_channels=8, value_channels=16,
                  num_heads=2, padding="mask")
    slices, patches = LDv2(impl="slices", **kwargs), LDv2(impl="patches", **kwargs)
    xg = rng.normal(size=(2, h, w, 12)).astype(np.float32)
    xl = rng.normal(size=(2, h, w, 12)).astype(np.float32)
    slices([xg, xl])
    patches([xg, xl])
    patches.set_weights(slices.get_weights())
    results = {}
    with jax.default_matmul_precision("highest"):
        for layer in (slices, patches):
            def loss(a, b, layer=layer):
                out = layer([a, b], training=False)
                return jnp.sum(out * jnp.cos(out)), out

            (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
                *on(device, (xg, xl)))
            results[layer.impl] = (out, grads)
    (out_s, grads_s), (out_p, grads_p) = results["slices"], results["patches"]
    checks.add("ldv2 slices vs patches: values", relative_error(out_s, out_p), 1e-5)
    checks.add("ldv2 slices vs patches: input gradients",
               max(relative_error(grads_s[0], grads_p[0]),
                   relative_error(grads_s[1], grads_p[1])), 1e-4)


def _tiny_gald(num_classes=5):
    from keras_gald.models import GALD

    return GALD("resnet_tiny", ga="aspp", ld="v2", num_classes=num_classes, dropout=0.0,
                aspp_dropout=0.0)


def _forward(model):
    """`run(device, x)`: the model's inference graph jitted once, its weights and `x`
    placed on `device` (JAX compiles once per device and precision setting)."""
    net = model.inference_model()
    fn = jax.jit(lambda t, n, a: net.stateless_call(t, n, a, training=False)[0])
    weights = ([v.value for v in net.trainable_variables],
               [v.value for v in net.non_trainable_variables])

    def run(device, x):
        return np.asarray(fn(*on(device, (*weights, x))), np.float32)

    return run


def check_gald(checks, device, cpu, quick):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 65, 97, 3)).astype(np.float32)
    model = _tiny_gald()
    forward = _forward(model)
    with jax.default_matmul_precision("highest"):
        expected = forward(cpu, x)
        checks.add("gald forward vs CPU, full fp32", relative_error(forward(device, x), expected),
                   1e-4)
    checks.record("gald forward vs CPU, default precision",
                  relative_error(forward(device, x), expected))
    weights = model.get_weights()
    for policy, bound in (("mixed_float16", 1e-2), ("mixed_bfloat16", 6e-2)):
        keras.mixed_precision.set_global_policy(policy)
        try:
            mixed = _tiny_gald()
            mixed.set_weights(weights)
            got = _forward(mixed)(device, x)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        checks.add(f"gald {policy} vs float32", relative_error(got, expected), bound)


def check_fit_and_save(checks, device):
    import keras_gald as kg

    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 64, 80, 3)).astype(np.float32)
    y = rng.integers(0, 5, size=x.shape[:3]).astype(np.int32)
    y[:, :6] = 255
    with jax.default_device(device):
        model = _tiny_gald()
        model.compile(optimizer=kg.optimizers.SGD(kg.optimizers.PolyLR(0.02, 10), momentum=0.9),
                      loss=kg.losses.OHEMCrossEntropy(thresh=0.7, min_kept=500),
                      metrics=[kg.metrics.MeanIoU(num_classes=5)])
        before = model.get_weights()
        losses = model.fit(x, y, epochs=3, batch_size=4, verbose=0).history["loss"]
        moved = max(float(np.abs(a - b).max()) for a, b in zip(model.get_weights(), before))
        checks.expect("fit: 3 steps, finite losses", bool(np.all(np.isfinite(losses))),
                      f"losses {[round(v, 4) for v in losses]}")
        checks.expect("fit: the weights moved", moved > 0, f"largest change {moved:.3g}")
        logits = model.predict(x, verbose=0)
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "model.keras"
            model.save(path)
            restored = keras.saving.load_model(path)
            again = restored.predict(x, verbose=0)
    checks.add("save_load: .keras round trip, same logits", relative_error(again, logits), 1e-6)


# ---------------------------------------------------------------- speed


def _jax_forward(cfg, size, policy, device):
    """A callable running the Keras network of `cfg` (dtype `policy`) once on `device`
    (`jax.jit` of its inference graph) and waiting for the result."""
    from common.models import build_keras

    keras.mixed_precision.set_global_policy(policy)
    try:
        with jax.default_device(device):
            model = build_keras(cfg, size, size)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    net = model.inference_model() if hasattr(model, "inference_model") else model
    weights = jax.device_put(([v.value for v in net.trainable_variables],
                              [v.value for v in net.non_trainable_variables]), device)
    x = jax.device_put(np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32),
                       device)
    forward = jax.jit(lambda t, n, a: net.stateless_call(t, n, a, training=False)[0])
    return lambda: jax.block_until_ready(forward(*weights, x))


def _torch_forward(torch, model, size, mode, device):
    """The same for the PyTorch twin `model` (eager, autocast for bf16 / fp16)."""
    x = torch.rand(1, 3, size, size, device=device)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)

    def call():
        with torch.no_grad(), torch.autocast(device, dtype=autocast,
                                             enabled=autocast is not None):
            out = model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return call


def time_speed(args, device, results):
    from common.models import CONFIGS, NUM_CLASSES, POLICIES, build_torch, import_torch
    from common.timing import paired_ratio, time_interleaved

    torch, torch_ref = (None, "--no-torch") if args.no_torch else import_torch()
    torch_device = None
    if torch is None:
        log(f"speed: PyTorch not timed ({torch_ref})")
    else:
        torch_device = "cuda" if device.platform == "gpu" else "cpu"
        results["torch"] = dict(version=torch.__version__, device=torch_device,
                                cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                                matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    rows = results.setdefault("speed", [])
    size = args.size
    for name in args.configs:
        cfg = CONFIGS[name]
        torch_model = None
        if torch is not None:
            torch.manual_seed(0)
            torch_model = build_torch(torch_ref, cfg).to(torch_device).eval()
        for mode in args.modes:
            fns = {"jax": _jax_forward(cfg, size, POLICIES[mode], device)}
            if torch_model is not None:
                fns["torch_eager"] = _torch_forward(torch, torch_model, size, mode, torch_device)
            log(f"speed: {name} {mode} 1x{size}x{size} ...")
            stats, times = time_interleaved(fns, 1, args.repeats)
            for backend, row in stats.items():
                row = {"config": name, "mode": mode, "input": f"1x{size}x{size}",
                       "backend": backend, "classes": NUM_CLASSES, **row}
                if backend == "jax" and "torch_eager" in times:
                    row["jax_over_torch_eager_paired"] = paired_ratio(times["jax"],
                                                                      times["torch_eager"])
                if size == 512 and name in PAPER_V100_MS:
                    row["paper_v100_ms"] = PAPER_V100_MS[name]
                rows.append(row)
                log(f"    {backend}: {row['ms']:.2f} ms (first call {row['first_ms']:.0f} ms)")
            del fns
            keras.backend.clear_session()
    return rows


# ---------------------------------------------------------------- main


def machine(device):
    info = dict(python=platform.python_version(), jax=jax.__version__, keras=keras.__version__,
                numpy=np.__version__, device=str(device), platform=device.platform,
                device_kind=getattr(device, "device_kind", ""))
    try:
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    info["tensorflow_imported"] = "tensorflow" in sys.modules
    return info


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    global jax, jnp, keras  # imported here: JAX_PLATFORMS must be set first
    import jax
    import jax.numpy as jnp
    import keras

    cpu = jax.devices("cpu")[0]
    if args.device == "cpu":
        device = cpu
    else:
        accelerators = [d for d in jax.devices() if d.platform != "cpu"]
        if not accelerators:
            if args.device == "gpu":
                log("jax_gpu_check: JAX sees no GPU (jax.devices(): "
                    f"{[str(d) for d in jax.devices()]})")
                return 2
            log("jax_gpu_check: JAX sees no accelerator; running on the CPU")
        device = accelerators[0] if accelerators else cpu
    results = {"machine": machine(device), "args": {k: str(v) for k, v in vars(args).items()}}
    log(f"jax_gpu_check on {device} ({results['machine']['device_kind']}), JAX {jax.__version__}, "
        f"Keras {keras.__version__}")
    start = time.perf_counter()
    checks = Checks()
    sections = {"conv": lambda: check_conv(checks, device, cpu, args.quick),
                "ldv2": lambda: check_ldv2(checks, device, args.quick),
                "gald": lambda: check_gald(checks, device, cpu, args.quick),
                "fit_and_save": lambda: check_fit_and_save(checks, device)}
    results["section_s"] = {}
    for name, run in sections.items():
        log(f"{name}:")
        tic = time.perf_counter()
        run()
        results["section_s"][name] = round(time.perf_counter() - tic, 1)
    results["checks"] = checks.rows
    results["failed"] = checks.failed
    results["checks_s"] = round(time.perf_counter() - start, 1)
    if args.configs:
        time_speed(args, device, results)
    results["machine"]["tensorflow_imported"] = "tensorflow" in sys.modules
    results["total_s"] = round(time.perf_counter() - start, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, args.json)
        log(f"wrote {args.json}")
    log(f"jax_gpu_check: {len(checks.rows) - len(checks.failed)} of {len(checks.rows)} checks "
        f"passed{'' if not checks.failed else '; FAILED: ' + ', '.join(checks.failed)}; "
        f"{results['total_s']} s")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
