"""benchmarks/camvid_ablation.py: the statistics (Student t quantile, t-interval, paired
differences), the run order, the summary read back from finished runs, and the boundary
tolerances it reports."""

import json
import math
import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import camvid_ablation as ablation  # noqa: E402

CLASSES = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car",
           "pedestrian", "bicyclist"]


def student_t_cdf(x, df, n=200_000):
    """P(T <= x) for x >= 0 by Simpson's rule on the Student t density (independent of
    the table under test)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    t = np.linspace(0.0, x, n + 1)
    pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(t * t / df))
    h = x / n
    integral = h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())
    return 0.5 + integral


@pytest.mark.parametrize("df", range(1, 31))
def test_t_table_is_the_student_0975_quantile(df):
    assert student_t_cdf(ablation.t_quantile_975(df), df) == pytest.approx(0.975, abs=1e-9)


def test_t_table_textbook_values_and_range():
    for df, value in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)):
        assert round(ablation.t_quantile_975(df), 3) == value
    with pytest.raises(ValueError, match="1..30 degrees of freedom, got 31"):
        ablation.t_quantile_975(31)
    with pytest.raises(ValueError, match="got 0"):
        ablation.t_quantile_975(0)


def test_t_interval_known_value():
    iv = ablation.t_interval([1.0, 2.0, 3.0, 4.0, None, 5.0])
    # mean 3, sample std sqrt(2.5), half width t_{0.975,4} * sqrt(2.5 / 5) = 1.963243...
    assert iv["n"] == 5 and iv["mean"] == pytest.approx(3.0)
    assert iv["std"] == pytest.approx(math.sqrt(2.5))
    assert iv["half_width"] == pytest.approx(1.9632432, abs=1e-6)
    assert (iv["low"], iv["high"]) == pytest.approx((1.0367568, 4.9632432), abs=1e-6)
    one = ablation.t_interval([0.25])
    assert one["mean"] == 0.25 and one["low"] is None and one["half_width"] is None
    assert ablation.fmt_interval(ablation.t_interval([0.01, 0.03])) == "+2.00 [-10.71, +14.71]"


def test_t_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    values = [0.012, -0.004, 0.021, 0.007, 0.015, -0.001]
    iv = ablation.t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                 scale=stats.sem(values))
    assert (iv["low"], iv["high"]) == pytest.approx((low, high), rel=1e-9)


def test_paired_differences_use_common_seeds_and_pair_them():
    runs = {0: {"m": 0.50}, 1: {"m": 0.60}, 2: {"m": 0.70}, 4: {"m": None}}
    ref = {0: {"m": 0.40}, 1: {"m": 0.65}, 3: {"m": 0.10}, 4: {"m": 0.3}}
    seeds, diffs = ablation.paired_differences(runs, ref, lambda r: r["m"])
    assert seeds == [0, 1] and diffs == pytest.approx([0.10, -0.05])
    # A constant gain under a large seed-to-seed spread: the paired interval is exact,
    # an unpaired one (difference of means) would span the spread.
    base = [0.30, 0.45, 0.38, 0.52, 0.41]
    ref = {s: {"m": v} for s, v in enumerate(base)}
    runs = {s: {"m": v + 0.02} for s, v in enumerate(base)}
    iv = ablation.t_interval(ablation.paired_differences(runs, ref, lambda r: r["m"])[1])
    assert iv["mean"] == pytest.approx(0.02) and iv["half_width"] == pytest.approx(0.0, abs=1e-12)


def test_plan_gives_complete_aspp_ldv2_pairs_first():
    args = ablation.build_parser().parse_args([])
    plan = ablation.plan_runs(args)
    assert plan[:10] == [(s, v) for s in range(5) for v in ("aspp", "aspp_ldv2")]
    assert plan[10:] == [(s, v) for s in range(3) for v in ("fcn", "aspp_ldv1")]
    args = ablation.build_parser().parse_args(["--more-variants", "--seeds", "0", "1"])
    assert ablation.plan_runs(args) == [(0, "aspp"), (0, "aspp_ldv2"), (1, "aspp"),
                                        (1, "aspp_ldv2")]


def test_boundary_tolerances_at_camvid_size():
    from keras_gald import metrics

    px = [metrics.boundary_tolerance_px((360, 480), t)
          for t in ablation.BOUNDARY_PX + tuple(metrics.DEFAULT_BOUNDARY_THRESHOLDS)]
    assert px == [1, 2, 3, 5, 1, 2, 3, 3]
    # A prediction whose edge is 2 px off: missed at 1 px, matched at 2 px.
    gt = np.zeros((40, 40), np.int32)
    gt[:, 20:] = 1
    pred = np.zeros_like(gt)
    pred[:, 22:] = 1
    f = metrics.boundary_f_score(pred, gt, 2, thresholds=(1, 2))["mean_f"]
    assert f[0] < 0.5 and f[1] == pytest.approx(1.0)


def fake_run(variant, seed, miou, bf, small):
    """An eval.json as `evaluate_run` writes it (the fields the summary reads)."""
    thresholds = [1.0, 2.0, 3.0, 5.0, 0.00088, 0.001875, 0.00375, 0.005]
    per_class = {c: 0.5 for c in CLASSES}
    per_class.update(small)
    confusion = np.diag(np.arange(1, 12) * 100).tolist()
    return {"variant": variant, "seed": seed, "num_images": 101, "mean_iou": miou,
            "class_names": CLASSES, "per_class_iou": per_class, "confusion_matrix": confusion,
            "boundary_f": {"thresholds": thresholds, "mean_f": bf,
                           "tolerance_px": {"360x480": [1, 2, 3, 5, 1, 2, 3, 3]}},
            "geometry": {"input_hw": [360, 480], "feature_map_hw": [46, 61],
                         **({"ldv2": {"kernel_size": 5, "dilation_rate": 3, "window_span": 13}}
                            if variant == "aspp_ldv2" else {})},
            "params": 400000, "steps": 900, "train_seconds": 600.0, "eval_seconds": 40.0,
            "train_process_seconds": 660.0, "load_average_before": [1.0, 1.0, 1.0],
            "load_average_after_train": [2.0, 1.5, 1.2],
            "config": {"name": "camvid", "backbone": "resnet_tiny", "crop_size": [360, 480],
                       "batch_size": 8, "eval_scale": 1.0},
            "machine": {"cpu_model": "Test CPU", "cpus_usable": 2, "cpu_flags": ["avx2"],
                        "gpus": []}}


def test_summarise_only_reads_finished_runs(tmp_path, capsys):
    data = tmp_path / "camvid"
    (data / "train").mkdir(parents=True)
    (data / "val").mkdir()
    out = tmp_path / "out"
    aspp_miou = [0.40, 0.45, 0.42]
    gains = [0.010, 0.030, 0.020]
    for seed in range(3):
        bf = [0.20, 0.30, 0.40, 0.50, 0.20, 0.30, 0.40, 0.40]
        ld_bf = [v + 0.01 * (seed + 1) for v in bf]
        for variant, miou, f, pole in (("aspp", aspp_miou[seed], bf, 0.10),
                                       ("aspp_ldv2", aspp_miou[seed] + gains[seed], ld_bf,
                                        0.10 + 0.05 * seed)):
            run_dir = out / f"{variant}-seed{seed}"
            run_dir.mkdir(parents=True)
            (run_dir / "eval.json").write_text(json.dumps(fake_run(
                variant, seed, miou, f, {"pole": pole})))
    prefix = tmp_path / "results" / "ablation"
    rc = ablation.main(["--data-dir", str(data), "--out", str(out), "--summarise-only",
                        "--results", str(prefix)])
    assert rc == 0
    assert "done earlier" in capsys.readouterr().out
    summary = json.loads((out / "results.json").read_text())
    vs = summary["variants"]["aspp_ldv2"]["vs_aspp"]
    assert vs["seeds"] == [0, 1, 2] and vs["mean_iou"]["differences"] == pytest.approx(gains)
    half = ablation.T_975[2] * 0.01 / math.sqrt(3)  # std of the gains is 0.01
    assert vs["mean_iou"]["low"] == pytest.approx(0.02 - half)
    assert vs["boundary_f"]["1 px"]["mean"] == pytest.approx(0.02)
    assert vs["per_class_iou"]["pole"]["mean"] == pytest.approx(0.05)
    md = (out / "results.md").read_text()
    assert f"+2.00 [{100 * (0.02 - half):+.2f}, {100 * (0.02 + half):+.2f}]" in md
    assert "feature map is 46x61" in md and "= 13 positions" in md
    assert "bF 1 px %" in md and "bF 2 px %" in md and "bF 0.005 (3 px)" in md
    assert "| FCN + ASPP + LDv2 | 0.40M | 3 | 44.33 ± 3.51 |" in md
    assert "20.00 ± 0.00 | 30.00 ± 0.00" in md  # ASPP's 1 px and 2 px columns differ
    assert (prefix.parent / "ablation.md").read_text() == md
    assert json.loads((prefix / "aspp_ldv2-seed1.json").read_text())["mean_iou"] == 0.48


def test_reference_variant_required(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    rc = ablation.main(["--data-dir", str(tmp_path), "--variants", "fcn", "--more-variants",
                        "--out", str(tmp_path / "o")])
    assert rc == 2 and "paired against 'aspp'" in capsys.readouterr().err


def test_camvid_preset_keeps_ld_local():
    """`camvid` trains and infers at 360x480: its 1/8 map is >= 3x LDv2's window per side
    (the `camvid_lowres` map is about one window)."""
    from training import configs
    from training.train import build_model

    config = configs.get("camvid")
    assert config.eval_scale == 1.0 and config.crop_size == (360, 480)
    config.ld = "v2"
    geometry = ablation.network_geometry(build_model(config, 11, False), (360, 480))
    span = geometry["ldv2"]["window_span"]
    assert span == 13 and min(geometry["feature_map_hw"]) >= 3 * span, geometry
    low = configs.get("camvid_lowres")
    assert math.ceil(360 * low.eval_scale / 8) < 3 * span  # 17 rows: LD nearly global


def test_runs_scored_at_other_tolerances_are_refused(tmp_path, capsys):
    for d in ("train", "val"):
        (tmp_path / "camvid" / d).mkdir(parents=True)
    out = tmp_path / "out"
    for seed, thresholds in ((0, None), (1, [3.0, 5.0, 9.0, 12.0])):
        run = fake_run("aspp", seed, 0.4, [0.2] * 8, {})
        if thresholds:
            run["boundary_f"].update(thresholds=thresholds, mean_f=[0.2] * 4)
        (out / f"aspp-seed{seed}").mkdir(parents=True)
        (out / f"aspp-seed{seed}" / "eval.json").write_text(json.dumps(run))
    rc = ablation.main(["--data-dir", str(tmp_path / "camvid"), "--out", str(out),
                        "--summarise-only"])
    assert rc == 2
    assert "aspp-seed1 scored other boundary tolerances" in capsys.readouterr().err


def test_ldv2_window_settings_go_to_the_ldv2_runs_only(tmp_path, capsys):
    """A Table II(b) sweep (`--set ldv2_kernel_size=3 ...`) reaches the LDv2 runs; the other
    variants, which the training CLI would refuse with those settings, train unchanged."""
    from training import train

    args = ablation.build_parser().parse_args([
        "--data-dir", str(tmp_path), "--set", "ldv2_kernel_size=3",
        "--set", "ldv2_dilation_rate=4", "--set", "steps=5"])
    configs = {}
    for variant in ("aspp", "aspp_ldv1", "aspp_ldv2"):
        cmd = ablation.train_command(args, variant, 0, tmp_path / variant)
        assert cmd[1:3] == ["-m", "training.train"]
        assert train.main(cmd[3:] + ["--print-config"]) == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        configs[variant] = json.loads(printed[printed.index("{"):printed.rindex("}") + 1])
    assert {v: (c["ld"], c["ldv2_kernel_size"], c["ldv2_dilation_rate"], c["steps"])
            for v, c in configs.items()} == {
        "aspp": (None, None, None, 5), "aspp_ldv1": ("v1", None, None, 5),
        "aspp_ldv2": ("v2", 3, 4, 5)}
