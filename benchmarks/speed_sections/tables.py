"""The tables `speed.py` prints at the end of a run, from its results dict (the
same dict it writes as JSON, so a table can be reprinted from a JSON file)."""

from common.models import MODES
from common.report import fmt, log


def print_tables(results):
    peak = results.get("peak", [])
    if peak:
        log("\n== Peak (GFLOP/s, median) ==")
        log(f"{'framework':<10}{'op':<9}{'dtype':<6}{'shape':<24}{'ms':>9}{'GFLOP/s':>10}"
            f"{'best':>8}")
        for r in peak:
            log(f"{r['framework']:<10}{r['op']:<9}{r['dtype']:<6}{r['shape']:<24}"
                f"{fmt(r.get('ms'), '.2f'):>9}{fmt(r.get('gflop_s'), '.1f'):>10}"
                f"{fmt(r.get('gflop_s_best'), '.1f'):>8}")

    params = results.get("params", {})
    if params:
        log("\n== Parameters (trainable; main = inference graph, aux = training-only head) ==")
        log(f"{'config':<20}{'keras main':>13}{'torch main':>13}{'keras aux':>11}"
            f"{'torch aux':>11}  match")
        for name, p in params.items():
            t = p["torch"] or {}
            log(f"{name:<20}{p['keras']['main']:>13,}{fmt(t.get('main'), ','):>13}"
                f"{p['keras']['aux']:>11,}{fmt(t.get('aux'), ','):>11}  "
                f"{'-' if p['match'] is None else ('yes' if p['match'] else 'NO')}")

    for section, title in (("forward", "Forward (batch 1)"), ("train", "Training step (SGD)")):
        rows = results.get(section, [])
        if not rows:
            continue
        log(f"\n== {title}: median ms; GFLOP = dense ops of one forward; % of the TF conv "
            "peak of the same dtype; torch = the PyTorch twin in the same precision (bf16: "
            "torch.autocast) ==")
        header = (f"{'config':<20}{'mode':<18}{'input':<14}{'ms':>10}{'first ms':>10}"
                  f"{'GFLOP':>9}{'GFLOP/s':>9}{'%peak':>7}{'torch ms':>10}{'K/T':>6}"
                  f"{'K/T rnd':>8}")
        log(header)
        log("-" * len(header))
        for r in rows:
            if "error" in r:
                log(f"{r['config']:<20}{r['mode']:<18}{r['input']:<14}  ERROR {r['error'][:60]}")
                continue
            log(f"{r['config']:<20}{r['mode']:<18}{r['input']:<14}{r['ms']:>10.1f}"
                f"{r['first_ms']:>10.0f}{fmt(r.get('gflop'), '.2f'):>9}"
                f"{fmt(r.get('gflop_s'), '.1f'):>9}{fmt(r.get('pct_conv_peak'), '.0f'):>7}"
                f"{fmt(r.get('torch_eager_ms'), '.1f'):>10}"
                f"{fmt(r.get('keras_over_torch'), '.2f'):>6}"
                f"{fmt(r.get('keras_over_torch_paired'), '.2f'):>8}")

    flops = [r for r in results.get("forward", []) if r.get("torch_gflop") is not None]
    if flops:
        log("\n== FLOP cross-check: Keras graph (dense ops) vs torch FlopCounterMode ==")
        keras_flops = {(r["config"], r["input"]): r.get("gflop") for r in results["forward"]
                       if r["mode"] in MODES}
        for r in flops:
            if r["mode"] != "torch_eager":
                continue
            k = keras_flops.get((r["config"], r["input"]))
            log(f"{r['config']:<20}{r['input']:<14} keras {fmt(k, '.3f'):>9} GFLOP   "
                f"torch {r['torch_gflop']:.3f} GFLOP")

    overhead = results.get("ld_overhead", [])
    if overhead:
        log("\n== LD overhead (forward time ratio to ASPP alone) ==")
        for r in overhead:
            log(f"{r['backbone']:<6}{r['mode']:<14}{r['input']:<14} LDv1 "
                f"{fmt(r.get('ldv1_over_aspp'), '.3f')}  LDv2 {fmt(r.get('ldv2_over_aspp'), '.3f')}")

    turns = results.get("ld_turns", [])
    if turns:
        log("\n== LD overhead timed in turns (ratio of medians / median of per-round ratios) ==")
        for r in turns:
            log(f"{r['backbone']:<6}{r['mode']:<14}{r['input']:<14} ASPP "
                f"{r[r['backbone'] + '_aspp_ms']:.1f} ms  LDv1 {r['ldv1_over_aspp']:.3f} / "
                f"{r['ldv1_over_aspp_paired']:.3f}  LDv2 {r['ldv2_over_aspp']:.3f} / "
                f"{r['ldv2_over_aspp_paired']:.3f}")

    block = results.get("ldv2_block", [])
    if block:
        log("\n== LDv2 block alone (median ms; ratios over the default slices) ==")
        for r in block:
            if "ratio" in r:
                log(f"{'':<14}{r['pass_']:<9}{r['mode']:<10} {r['impl']} = {r['ratio']:.2f}x")
            elif "ms" in r:
                log(f"{r['impl']:<14}{r['pass_']:<9}{r['mode']:<12}{r['input']:<22}"
                    f"{r['ms']:>9.1f} ms")
            else:
                log(f"{r['impl']:<14}{r['pass_']:<9}{r['mode']:<12} ERROR {r['error'][:60]}")

    dilated = results.get("dilated_conv", [])
    if dilated:
        log("\n== 3x3 conv (SAME), median ms: conv = tf.nn.conv2d + hand-written gradient, "
            "taps = one matmul per tap, winograd = F(2x2,3x3), tf = TF's own gradient "
            "(rate 1); auto picks ==")
        for r in dilated:
            times = "  ".join(f"{m} {ms:8.1f}" for m, ms in r["ms"].items())
            log(f"{r['input']:<34}{r['pass_']:<9}taps share {r['taps_fraction']:.2f}  {times}"
                f"  conv/taps {r['conv_over_taps']:.2f}  "
                f"winograd/conv {fmt(r.get('winograd_over_conv'), '.2f')}  auto={r['auto']} "
                f"auto/torch {fmt(r['auto_over_torch'], '.2f')}")

    layer_totals = results.get("train_layers_totals", [])
    if layer_totals:
        log("\n== Training layers: forward + backward ms summed over each kind's layers "
            "(ours = library layer, keras = stock Keras layer / TF gradients) ==")
        for r in layer_totals:
            ours, stock, tch = r.get("ours"), r.get("keras"), r.get("torch_eager")
            log(f"{r['config']:<18}{r['kind']:<18} x{r['count']:<4}ours {ours:8.1f}  keras "
                f"{stock:8.1f}  torch {fmt(tch, '8.1f')}  ours/keras {ours / stock:.2f}  "
                f"ours/torch {fmt(ours / tch if tch else None, '.2f')}")

    for r in results.get("optimizer", []):
        ms = r["ms"]
        log(f"\n== SGD update, {r['config']} ({r['weights'] / 1e6:.1f} M weights): "
            + "  ".join(f"{k} {v:.1f} ms" for k, v in ms.items()) + " ==")

    memory = results.get("memory", [])
    if memory:
        log("\n== Peak memory (TF BFC allocator peak above inputs+weights; maxrss growth) ==")
        for r in memory:
            if "error" in r:
                log(f"{r['block']:<14}{r['pass_']:<9}{r['input']:<20} ERROR {r['error'][:80]}")
            else:
                log(f"{r['block']:<14}{r['pass_']:<9}{r['input']:<20}{r['extra_mib']:>9.0f} MiB"
                    f"{r['maxrss_growth_mib']:>9.0f} MiB rss")

    backbones = [r for r in results.get("forward", []) if r["config"].endswith("_backbone")
                 and r["mode"] in MODES and r.get("pct_conv_peak") is not None]
    for r in backbones:
        log(f"backbone {r['config']} {r['mode']} {r['input']}: {r['pct_conv_peak']:.0f}% of the "
            "conv peak (target: >= 80% for fp32 at full size; benchmarks/README.md)")

    jax_rows = results.get("jax", [])
    if jax_rows:
        log("\n== Backends in turns (ms median; JAX in a KERAS_BACKEND=jax child process) ==")
        for r in jax_rows:
            head = f"{r['section']:<8}{r['config']:<18}{r['input']:<14}{r['backend']:<12}"
            if "error" in r:
                log(head + f" ERROR {r['error'][:80]}")
                continue
            ratios = "  ".join(f"{k[len('jax_over_'):-len('_paired')]} x{v:.2f}"
                               for k, v in r.items() if k.startswith("jax_over_"))
            log(head + f"{r['ms']:>10.1f}" + (f"   JAX / {ratios}" if ratios else ""))
