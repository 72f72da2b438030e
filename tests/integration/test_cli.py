"""The `kdw` command line, run as a real subprocess: help, the fast demo, listing, comparing, bad input."""

import json

import pytest
from conftest import kdw

from workbench.models.zoo import ModelConfig, build_model, save_checkpoint

FAST = ["--dataset", "digits", "--model", "mlp", "--depth", "1", "--width", "16", "--epochs", "2",
        "--batch-size", "64", "--no-profile"]


def test_help_shows_the_objective_with_alpha_on_the_kd_term():
    out = kdw("--help").stdout
    assert "L = (1 − α)·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))" in out
    assert "α = 0 is the student trained without the teacher" in out
    assert "T²" in kdw("distill", "--help").stdout


def test_demo_fast_prints_teacher_scratch_and_kd_rows(runs_dir):
    proc = kdw("demo", "--fast", "--runs-dir", str(runs_dir))
    out = proc.stdout
    for word in ("teacher", "scratch", "distilled", "KD gain", "latency ms", "size MB", "vs teacher",
                 "The best distilled student"):
        assert word in out, out
    assert max(len(line) for line in out.splitlines() if line.startswith(("role", "teacher", "scratch"))) <= 120
    assert "Traceback" not in proc.stderr
    runs = json.loads(kdw("runs", "--json", "--runs-dir", str(runs_dir)).stdout)
    assert sorted(r["kind"] for r in runs) == ["kd", "scratch"] and all(r["state"] == "done" for r in runs)


def test_distill_trains_the_scratch_twin_and_compare_pairs_them(runs_dir):
    kdw("distill", *FAST, "-T", "3", "--alpha", "0.8", "--runs-dir", str(runs_dir))
    runs = json.loads(kdw("runs", "--json", "--runs-dir", str(runs_dir)).stdout)
    assert sorted(r["kind"] for r in runs) == ["kd", "scratch"]
    kd = next(r for r in runs if r["kind"] == "kd")
    assert kd["method"] == "kd" and kd["params"] == {"temperature": 3.0, "alpha": 0.8}
    rows = json.loads(kdw("compare", kd["run_id"], "--json", "--runs-dir", str(runs_dir)).stdout)
    roles = [r["role"] for r in rows]
    assert roles == ["teacher", "scratch", "kd"]  # the twin is found in the store
    kd_row = rows[-1]
    assert kd_row["kd_gain"] == pytest.approx(kd_row["test_acc"] - rows[1]["test_acc"])
    table = kdw("compare", *[r["run_id"] for r in runs], "--runs-dir", str(runs_dir)).stdout
    assert "KD gain" in table and "test acc %" in table and "test acc % (last)" not in table
    wide = kdw("compare", *[r["run_id"] for r in runs], "--wide", "--runs-dir", str(runs_dir)).stdout
    assert "test acc % (last)" in wide and "samples/s" in wide and "FLOPs" in wide and "Agreement:" in wide
    assert "kd" in kdw("runs", "--runs-dir", str(runs_dir)).stdout


def test_scratch_command_trains_on_labels_alone(runs_dir):
    proc = kdw("scratch", *FAST, "--run-id", "plain", "--runs-dir", str(runs_dir))
    cfg = json.loads((runs_dir / "plain" / "config.json").read_text())
    assert cfg["kind"] == "scratch" and cfg["method"] == "ce" and cfg["objective"] == "L = CE(z_s, y)"
    assert "L = CE(z_s, y)" in proc.stderr  # the start line shows the run's own objective


def test_distill_start_line_and_flags_follow_the_method(runs_dir):
    proc = kdw("distill", *FAST, "--method", "dkd", "-T", "2", "--no-scratch", "--run-id", "d1",
               "--runs-dir", str(runs_dir))
    assert "L = CE + warm-up·(1·TCKD + 8·NCKD), T = 2" in proc.stderr
    assert json.loads((runs_dir / "d1" / "config.json").read_text())["method_params"]["temperature"] == 2.0
    _fails("distill", *FAST, "--method", "dkd", "--alpha", "0.5", "--runs-dir", str(runs_dir),
           match="--alpha is the weight in [0, 1] of vanilla KD's distillation term")
    _fails("distill", *FAST, "--method", "rkd", "-T", "2", "--runs-dir", str(runs_dir), match="rkd has no temperature")


def _fails(*args, match):
    proc = kdw(*args, check=False)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert match in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def test_bad_temperature_is_refused(runs_dir):
    _fails("distill", *FAST, "-T", "0", "--runs-dir", str(runs_dir), match="temperature T must be > 0")
    assert not runs_dir.exists() or not any(runs_dir.iterdir())  # nothing half-made


def test_bad_alpha_is_refused(runs_dir):
    _fails("distill", *FAST, "--alpha", "1.2", "--runs-dir", str(runs_dir), match="alpha must be in [0, 1]")


def test_unknown_model_and_dataset_are_refused(runs_dir):
    _fails("distill", *FAST, "--model", "vit", "--runs-dir", str(runs_dir), match="unknown model family")
    _fails("distill", *FAST, "--model", "transformer", "--runs-dir", str(runs_dir),
           match="a transformer model reads text")
    _fails("distill", "--dataset", "imagenet", "--runs-dir", str(runs_dir), match="unknown data set 'imagenet'")


def test_teacher_that_does_not_fit_is_refused_before_any_run_exists(runs_dir, tmp_path):
    path = tmp_path / "t.safetensors"
    save_checkpoint(build_model(ModelConfig("mlp", depth=1, width=8), (1, 28, 28), 10), path)
    _fails("distill", *FAST, "--teacher", str(path), "--runs-dir", str(runs_dir), match="expects input (1, 28, 28)")
    assert not any(runs_dir.glob("*/config.json"))


def test_corrupted_checkpoint_is_refused(runs_dir, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    _fails("distill", *FAST, "--teacher", str(bad), "--runs-dir", str(runs_dir),
           match="not a valid safetensors checkpoint")


def test_run_id_with_a_path_is_refused(runs_dir, tmp_path):
    _fails("scratch", *FAST, "--run-id", "../escape", "--runs-dir", str(runs_dir), match="invalid run id")
    assert not (tmp_path / "escape").exists()


def test_unwritable_runs_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    _fails("scratch", *FAST, "--runs-dir", str(tmp_path / "file" / "runs"), match="not writable")


def test_compare_unknown_run_is_a_clear_error(runs_dir):
    _fails("compare", "nope", "--runs-dir", str(runs_dir), match="no run 'nope'")


def test_profile_re_measures_a_finished_run_and_its_teacher(runs_dir):
    kdw("distill", *FAST, "--no-scratch", "--run-id", "timed", "--runs-dir", str(runs_dir))
    summary = json.loads((runs_dir / "timed" / "summary.json").read_text())
    assert "profile" not in summary  # trained with --no-profile
    out = kdw("profile", "timed", "--runs-dir", str(runs_dir)).stdout
    assert "timed:" in out and "samples/s" in out and "teacher" in out
    summary = json.loads((runs_dir / "timed" / "summary.json").read_text())
    for prof in (summary["profile"], summary["teacher"]["profile"]):
        assert prof["latency_ms"] > 0 and prof["throughput"] > 0 and prof["device"] == "cpu"
        assert 0.0 <= prof["cpu_busy_elsewhere"] <= 1.0  # Linux: read from /proc/stat
    table = kdw("compare", "timed", "--runs-dir", str(runs_dir)).stdout
    assert "latency ms" in table
    _fails("profile", "--runs-dir", str(runs_dir), match="name runs to profile")
