"""`forward`: latency of one image (batch 1, `--size`, `--large` adds R101
ASPP + LDv2 at 1024x2048) per configuration and mode: `fp32` (`tf.function`),
`fp32_xla` (`jit_compile=True`), `bf16` (`mixed_bfloat16`, set before building;
logits stay float32), `fp16` (`mixed_float16`, for GPUs; no PyTorch twin).
fp32 and bf16 rows are timed in turns with their PyTorch twins (`twins`).

Each row gives the FLOPs of one forward pass (`common.flops`) counted on the
fp32 inference graph traced under `keras_gald.ops.portable_ops()`, i.e.
with direct convolutions (`gflop`); `gflop_s` and `pct_conv_peak` (of the TF
conv peak of the same dtype, section `peak`) divide it, so they are effective
rates. `gflop_executed` is the graph as it runs: Winograd F(2x2, 3x3) does 4/9
of the multiply-adds of the wide 3x3 convs (bf16 rows: the bf16 graph, which
takes Winograd only for wider kernels, its taps-path convs counted as taps).
Backbone-only rows (`*_backbone`) show how close the convolutions get to the
peak.

`ld_overhead`: (ASPP+LDv1)/ASPP and (ASPP+LDv2)/ASPP from the `forward` rows.
`ld_turns` (a section of its own): the same three networks built side by side
and timed in turns per mode, with per-round ratios, robust to drift.
"""

import gc

from common.flops import count_flops, torch_flops
from common.models import (CONFIGS, LARGE_CONFIG, LARGE_SIZE, build_keras, build_torch,
                           fresh_session, inference_fn, keras_param_counts,
                           set_policy, torch_variants)
from common.report import log, write_json
from common.timing import paired_ratio, sync_tf, time_interleaved
from speed_sections.peak import conv_peak
from speed_sections.twins import attach_torch_ratios, time_with_twins, torch_row


def _forward_jobs(args):
    jobs = [(name, CONFIGS[name], (args.size, args.size)) for name in args.configs]
    if args.large:
        jobs.append((LARGE_CONFIG, CONFIGS[LARGE_CONFIG], LARGE_SIZE))
    return jobs


def _record_params(results, name, keras_model, torch_model, torch_ref):
    """Records the Keras (and torch) parameter counts of config `name` once."""
    params = results.setdefault("params", {})
    if name in params:
        return
    if torch_model is not None:
        entry = torch_ref.compare_param_counts(keras_model, torch_model)
    else:
        entry = {"keras": keras_param_counts(keras_model), "torch": None, "match": None}
    params[name] = entry
    message = f"[params] {name}: keras {entry['keras']['total']:,}"
    if entry["torch"]:
        verdict = "match" if entry["match"] else "MISMATCH"
        message += f", torch {entry['torch']['total']:,} ({verdict})"
    log(message)


def measure_forward(args, torch, torch_ref, results):
    import tensorflow as tf

    rows = results.setdefault("forward", [])
    for name, cfg, (height, width) in _forward_jobs(args):
        images = tf.random.uniform((1, height, width, 3), seed=0)
        config_rows, models = [], {}
        torch_job = None
        if torch is not None:
            try:
                torch_job = _torch_forward_job(args, torch, torch_ref, cfg, height, width)
            except Exception as exc:  # noqa: BLE001
                log(f"    PyTorch model failed: {type(exc).__name__}: {exc}")

        def model_for(policy):
            # fp32 and fp32_xla share one fp32 build; bf16 needs its own (the
            # policy is read when layers are created).
            if policy not in models:
                set_policy(policy)
                try:
                    models[policy] = build_keras(cfg, height, width)
                finally:
                    set_policy("fp32")
            return models[policy]

        torch_stats = {}
        for mode in args.modes:
            log(f"[forward] {name} {mode} {height}x{width} ...")
            row = dict(config=name, mode=mode, input=f"1x{height}x{width}")
            try:
                fn = inference_fn(model_for(mode if mode in ("bf16", "fp16") else "fp32"),
                                   jit=mode == "fp32_xla")

                def keras_call(fn=fn):
                    sync_tf(fn(images))

                torch_stats.update(time_with_twins(args, row, keras_call, torch_job))
                log(f"    {row['ms']:.1f} ms (first call {row['first_ms']:.0f} ms)")
            except Exception as exc:  # noqa: BLE001 - keep the run going, report it
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                log(f"    FAILED: {row['error']}")
            config_rows.append(row)

        flops = None
        try:
            # Counted on the fp32 graph traced without XLA (XLA compiles that same
            # graph) and on direct convolutions: under portable_ops() Winograd's
            # 16 batched matmuls (4/9 of the multiply-adds) stay out, so GFLOP/s
            # and % of peak are rates of the same work for every path.
            from keras_gald.ops.portable import portable_ops

            with portable_ops():
                flops = count_flops(
                    inference_fn(model_for("fp32")).get_concrete_function(images))
            flops["gflop_executed"] = count_flops(
                inference_fn(model_for("fp32")).get_concrete_function(images))["gflop"]
            if "bf16" in args.modes:
                # bf16 takes Winograd only for wider kernels. Its taps-path
                # convs run as dense dilated Conv2D ops whose oneDNN kernel
                # skips the padding taps, so they are counted as the taps.
                from keras_gald.ops import Policy

                with Policy.current().replace(taps_direct_forward_bf16=False):
                    flops["gflop_executed_bf16"] = count_flops(
                        inference_fn(model_for("bf16")).get_concrete_function(images))["gflop"]
            if name not in results.get("params", {}):
                torch_model = torch_job["model"] if torch_job is not None else None
                _record_params(results, name, model_for("fp32"), torch_model, torch_ref)
        except Exception as exc:  # noqa: BLE001
            log(f"    FLOP / parameter count failed: {type(exc).__name__}: {exc}")
        models.clear()
        fresh_session()
        for row in config_rows:
            _add_flops(row, flops, results)
            if "gflop_s" in row:
                share = row.get("pct_conv_peak")
                log(f"    {name} {row['mode']}: {row['gflop']:.2f} GFLOP, "
                    f"{row['gflop_s']:.1f} GFLOP/s"
                    + ("" if share is None else f", {share:.0f}% of conv peak"))
        rows.extend(config_rows)
        if torch_job is not None:
            _torch_forward_rows(args, torch_job, torch_stats, name, height, width, rows,
                                results, flops)
            attach_torch_ratios(rows, name, f"1x{height}x{width}")
            del torch_job
            gc.collect()
        write_json(args.json, results)


def _add_flops(row, flops, results):
    if not flops:
        return
    row["gflop"] = flops["gflop"]
    row["gflop_by_op"] = flops["by_op"]
    row["tf_profiler_gflop"] = flops["tf_profiler_gflop"]
    executed = "gflop_executed_bf16" if row.get("mode") == "bf16" else "gflop_executed"
    if executed in flops:
        row["gflop_executed"] = flops[executed]
    if flops["uncounted"]:
        row["flops_uncounted_ops"] = flops["uncounted"][:20]
    if "ms" in row:
        row["gflop_s"] = flops["gflop"] / (row["ms"] / 1e3)
        peak = conv_peak(results, "bf16" if row["mode"] == "bf16" else "fp32")
        if peak:
            row["pct_conv_peak"] = 100.0 * row["gflop_s"] / peak


def _torch_forward_job(args, torch, torch_ref, cfg, height, width):
    """The PyTorch twin of `cfg`, ready to time: `{"fns": {mode: call}, "model",
    "torch_gflop"}` (eager channels-last, plus `torch.compile` with `--torch-compile`)."""
    torch.manual_seed(0)
    model = build_torch(torch_ref, cfg).eval().to(memory_format=torch.channels_last)
    images = torch.rand(1, 3, height, width).contiguous(memory_format=torch.channels_last)
    variants = torch_variants(args, torch, model)

    def make_call(net, bf16):
        def call():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                net(images)

        return call

    return dict(fns={mode: make_call(net, bf16) for mode, net, bf16 in variants}, model=model,
                torch_gflop=torch_flops(torch, torch_ref, cfg, height, width))


def _torch_forward_rows(args, job, stats, name, height, width, rows, results, flops):
    """Rows for the PyTorch variants: timings from the interleaved fp32 run
    (`stats`), or timed alone here when fp32 was not among the modes."""
    for mode, call in job["fns"].items():
        row = torch_row(args, "forward", name, mode, f"1x{height}x{width}", call, stats)
        row["torch_gflop"] = job["torch_gflop"]
        if flops and "ms" in row:
            # The Keras graph's dense FLOPs: the same network, so the same work.
            row["gflop"] = flops["gflop"]
            row["gflop_s"] = flops["gflop"] / (row["ms"] / 1e3)
            peak = conv_peak(results, "bf16" if mode.endswith("bf16") else "fp32")
            if peak:
                row["pct_conv_peak"] = 100.0 * row["gflop_s"] / peak
        rows.append(row)


def ld_overhead(results):
    """(ASPP+LDv1)/ASPP and (ASPP+LDv2)/ASPP forward-time ratios per backbone, mode, input."""
    times = {(r["config"], r["mode"], r["input"]): r["ms"] for r in results.get("forward", [])
             if "ms" in r}
    rows = []
    for (config, mode, size), ms in sorted(times.items()):
        if not config.endswith("_aspp"):
            continue
        entry = dict(backbone=config[: -len("_aspp")], mode=mode, input=size, aspp_ms=ms)
        for ld in ("ldv1", "ldv2"):
            other = times.get((f"{config}_{ld}", mode, size))
            if other is not None:
                entry[f"aspp_{ld}_ms"] = other
                entry[f"{ld}_over_aspp"] = other / ms
        if len(entry) > 4:
            rows.append(entry)
    results["ld_overhead"] = rows


def measure_ld_turns(args, results):
    """LD overhead timed in turns: for every backbone of `--configs` with an
    `_aspp` configuration, the ASPP, ASPP+LDv1 and ASPP+LDv2 Keras networks are
    built side by side and called round-robin (`time_interleaved`), per mode,
    so the per-round ratios see the same machine state. `ld_overhead` divides
    medians of separately timed configurations, which a slow spell of a shared
    machine can move by more than the LD modules cost."""
    import tensorflow as tf

    rows = results.setdefault("ld_turns", [])
    height, width = args.size, args.size
    images = tf.random.uniform((1, height, width, 3), seed=0)
    backbones = sorted({name[: -len("_aspp")] for name in args.configs if name.endswith("_aspp")})
    for backbone in backbones:
        names = [f"{backbone}_aspp", f"{backbone}_aspp_ldv1", f"{backbone}_aspp_ldv2"]
        for mode in args.modes:
            if mode == "fp32_xla":
                continue
            log(f"[ld_turns] {backbone} {mode} {height}x{width}: ASPP, +LDv1, +LDv2 in turns ...")
            set_policy(mode)
            try:
                fns = {}
                for name in names:
                    fn = inference_fn(build_keras(CONFIGS[name], height, width))
                    fns[name] = lambda fn=fn: sync_tf(fn(images))
                stats, times = time_interleaved(fns, args.warmup, args.repeats)
            finally:
                set_policy("fp32")
                fns = None
                fresh_session()
            row = dict(backbone=backbone, mode=mode, input=f"1x{height}x{width}",
                       **{f"{name}_ms": stats[name]["ms"] for name in names},
                       **{f"{name}_all": stats[name]["ms_all"] for name in names})
            for ld, name in (("ldv1", names[1]), ("ldv2", names[2])):
                row[f"{ld}_over_aspp"] = stats[name]["ms"] / stats[names[0]]["ms"]
                row[f"{ld}_over_aspp_paired"] = paired_ratio(times[name], times[names[0]])
            log(f"    ASPP {row[names[0] + '_ms']:.1f} ms; LDv1/ASPP "
                f"{row['ldv1_over_aspp']:.3f} (per round {row['ldv1_over_aspp_paired']:.3f}), "
                f"LDv2/ASPP {row['ldv2_over_aspp']:.3f} "
                f"(per round {row['ldv2_over_aspp_paired']:.3f})")
            rows.append(row)
            write_json(args.json, results)
