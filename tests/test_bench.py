"""python -m hpccnn.bench end to end at tiny size (the targets are checked by running it, not here)."""

import csv

from conftest import run_module

from hpccnn.bench import MODELS, SECONDS, Plan, plan


def test_options_override_each_models_own_batch_and_warmup_and_time_the_rest():
    side, channels, batch, warmup = MODELS["alexnet227"]
    assert plan("alexnet227") == Plan(batch, warmup, steps=0, seconds=SECONDS)  # timed by the clock
    assert plan("alexnet227", batch=64, warmup=2) == Plan(64, 2, 0, SECONDS)
    assert plan("alexnet227", steps=9, seconds=2) == Plan(batch, warmup, 9, 2)


def test_bench_writes_every_measure_for_each_runner(tmp_path):
    out = tmp_path / "bench"
    proc = run_module("hpccnn.bench", "--models", "cnn_v3", "--seconds", "1", "--warmup", "4", "--repeats", "2",
                      "--out", out, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "bench.csv")))
    assert [r["runner"] for r in rows] == ["plain keras", "hpccnn 1 rank", "hpccnn 2 ranks"]
    for r in rows:
        assert float(r["images_per_second"]) > 0 and 0 < float(r["mfu"]) < 1.5
        assert float(r["first_step_seconds"]) > 0 and float(r["peak_rss_mb_per_rank"]) > 100
        assert float(r["train_gflop_per_image"]) == 0.0273  # 3 x 2 x 4.55 MMAC, cnn_v3 at 32x32
        # about a second of steps, sized from the warm-up's rate (and agreed by both ranks: else a hang)
        assert 0.4 < float(r["timed_seconds"]) < 3 and int(r["timed_steps"]) > 3
    assert rows[0]["vs_keras"] == "1.0" and rows[1]["vs_1_rank"] == "1.0"
    for r in rows[1:]:  # the rounds' spread brackets their median
        assert float(r["vs_keras_min"]) <= float(r["vs_keras"]) <= float(r["vs_keras_max"])
    assert all(r["rounds"] == "2" for r in rows)
    table = (out / "bench.md").read_text()
    assert "median of 2 rounds" in table and "lowest and highest round" in table
    assert f"{float(rows[1]['vs_keras']):.2f}× ({float(rows[1]['vs_keras_min']):.2f}–" in table
    assert table.count("| cnn_v3 | 32×32 | 32 |") == 3 and "matmul peak" in table and " cores of " in table
    assert table.count("Gbit/s |") == 3  # scaling on paper: one row per link speed
    again = run_module("hpccnn.bench", "--models", "cnn_v3", "--out", out)
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwritten


def test_variants_measure_speed_options_against_the_defaults(tmp_path):
    out = tmp_path / "variants"
    # timed by the clock: with hpccnn's 8 steps per execution Keras calls back once per 8 steps, and an
    # 8-step warm-up would give its rate timer a single call (a 0/0 rate, and the run "failed")
    proc = run_module("hpccnn.bench", "--models", "cnn_v3", "--variants", "none (A/A),steps_per_execution 1",
                      "--seconds", "1", "--warmup", "8", "--repeats", "2", "--out", out, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "variants.csv")))
    assert [(r["variant"], r["ranks"], r["pairs"]) for r in rows] == [("none (A/A)", "1", "2"),
                                                                      ("steps_per_execution 1", "1", "2")]
    for r in rows:
        assert float(r["default_images_per_second"]) > 0 and float(r["variant_images_per_second"]) > 0
        assert 0.2 < float(r["ratio"]) < 5
    assert "| cnn_v3 | 32 | 1 | none (A/A) |" in (out / "variants.md").read_text()
    bad = run_module("hpccnn.bench", "--variants", "warp drive", "--out", tmp_path / "x")
    assert bad.returncode == 2 and "unknown variant 'warp drive'" in bad.stderr and not (tmp_path / "x").exists()
    for option, value in (("--warmup", "-1"), ("--warmup", "1"), ("--seconds", "0")):
        bad = run_module("hpccnn.bench", option, value, "--out", tmp_path / "x")
        assert bad.returncode == 2 and option in bad.stderr and not (tmp_path / "x").exists(), bad.stderr


def test_interleave_trains_both_runners_in_one_process_in_alternating_chunks(tmp_path):
    out = tmp_path / "interleaved"
    proc = run_module("hpccnn.bench", "--models", "cnn_v3", "--interleave", "4", "--seconds", "0.3",
                      "--warmup", "4", "--out", out, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [row] = list(csv.DictReader(open(out / "interleaved.csv")))
    assert row["model"] == "cnn_v3" and row["chunks"] == "4" and int(row["steps_per_chunk"]) >= 3
    # the two runners really are the two paths: Keras' own SGD, and Horovod's wrapper around it
    assert row["keras_optimizer"].startswith("keras.") and row["keras_optimizer"].endswith(".SGD")
    assert row["hpccnn_optimizer"].startswith("horovod."), row["hpccnn_optimizer"]
    assert float(row["keras_images_per_second"]) > 0 and float(row["hpccnn_images_per_second"]) > 0
    assert float(row["ratio_q1"]) <= float(row["ratio"]) <= float(row["ratio_q3"])
    assert 0.3 < float(row["ratio"]) < 3
    assert f"| cnn_v3 | 32 | {row['steps_per_chunk']} |" in (out / "interleaved.md").read_text()
    bad = run_module("hpccnn.bench", "--interleave", "3", "--variants", "xla", "--out", tmp_path / "x")
    assert bad.returncode == 2 and "--interleave" in bad.stderr and not (tmp_path / "x").exists()
