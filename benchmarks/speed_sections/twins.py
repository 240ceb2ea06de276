"""Timing a Keras row in turns with its PyTorch twins, and the rows and ratios
that come out of it.

The twins (`benchmarks/torch_reference.py`) run eager, `torch.channels_last`,
with as many threads as TF; bf16 rows are timed against the twin under
`torch.autocast("cpu", torch.bfloat16)` (`common.models.TORCH_TWINS`).
`keras_over_torch` is the ratio of the two medians, `keras_over_torch_paired`
("K/T rnd") the median of the per-round ratios.
"""

from common.models import MODES, TORCH_TWINS
from common.report import log
from common.timing import paired_ratio, time_calls, time_interleaved


def time_with_twins(args, row, keras_fn, torch_job, settle=0):
    """Times `keras_fn` into `row`. With PyTorch twins of the row's precision
    (`TORCH_TWINS`, in `torch_job`), they are timed in turns (`settle` untimed calls
    before each timed one) and the twins' stats are returned (`{torch mode: stats}`)."""
    twins = {} if torch_job is None else {
        m: fn for m, fn in torch_job["fns"].items() if m in TORCH_TWINS.get(row["mode"], ())}
    if not twins:
        row.update(time_calls(keras_fn, args.warmup, args.repeats))
        return {}
    stats, times = time_interleaved({"keras": keras_fn, **twins},
                                    args.warmup, args.repeats, settle=settle)
    row["settle_calls"] = settle
    row.update(stats.pop("keras"))
    reference = next(iter(twins))
    row["keras_over_torch_paired"] = paired_ratio(times["keras"], times[reference])
    log("    in turns with " + ", ".join(f"{m} {st['ms']:.1f} ms" for m, st in stats.items())
        + f"; Keras/PyTorch ({reference}) per round {row['keras_over_torch_paired']:.3f}")
    return stats


def torch_row(args, section, name, mode, size, call, stats):
    """A PyTorch row: its stats from the in-turns run, or `call` timed alone now."""
    row = dict(config=name, mode=mode, input=size)
    if mode in stats:
        row.update(stats[mode])
        return row
    log(f"[{section}] {name} {mode} {size} ...")
    try:
        row.update(time_calls(call, args.warmup, args.repeats))
        log(f"    {row['ms']:.1f} ms (first call {row['first_ms']:.0f} ms)")
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        log(f"    FAILED: {row['error']}")
    return row


def attach_torch_ratios(rows, name, size):
    """Adds `torch_eager_ms`, `keras_over_torch` (and the `torch_compile`
    equivalents) to the Keras rows of config `name` at input `size`: fp32 and
    fp32_xla rows against PyTorch fp32, bf16 rows against PyTorch under bf16
    autocast (`torch_reference` names the twin)."""
    same = [r for r in rows if r["config"] == name and r["input"] == size and "ms" in r]
    torch_ms = {r["mode"]: r["ms"] for r in same if r["mode"] not in MODES}
    for row in same:
        if row["mode"] not in MODES:
            continue
        twins = TORCH_TWINS.get("fp32" if row["mode"] == "fp32_xla" else row["mode"], ())
        for torch_mode, ms_key, ratio_key in (
            (twins[0], "torch_eager_ms", "keras_over_torch"),
            ("torch_compile", "torch_compile_ms", "keras_over_torch_compile"),
        ):
            if torch_mode in twins and torch_mode in torch_ms:
                row[ms_key] = torch_ms[torch_mode]
                row[ratio_key] = row["ms"] / torch_ms[torch_mode]
                if ms_key == "torch_eager_ms":
                    row["torch_reference"] = torch_mode
