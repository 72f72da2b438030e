"""Deployment: ONNX, int8 and pruned variants of digits students, measured in ONNX Runtime; bad input is a sentence."""

import json

import pytest
import torch

pytest.importorskip("onnxruntime")

from conftest import kdw  # noqa: E402

from workbench.analysis.compare import comparison_rows  # noqa: E402
from workbench.deploy.export import ExportOptions, export_onnx, export_run, quantize_int8, zip_variant
from workbench.errors import DeployError
from workbench.jobs.queue import run_in_process  # noqa: E402
from workbench.models.zoo import ModelConfig  # noqa: E402
from workbench.train.loop import TrainConfig  # noqa: E402

BASE = dict(kind="kd", dataset="digits", teacher="digits-cnn", epochs=6, batch_size=64, profile=False)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """A digits MLP student with more than 50k parameters, exported to ONNX and int8 once for the module."""
    from workbench.store.runs import RunStore

    store = RunStore(tmp_path_factory.mktemp("deploy") / "runs")
    cfg = TrainConfig(**{**BASE, "profile": True}, model=ModelConfig("mlp", depth=1, width=800))
    run = run_in_process(store, cfg, run_id="mlp")
    results = {m["variant"]: m for m in export_run(run, store, ExportOptions(int8=True))}
    return store, run, results


def test_onnx_fp32_agrees_with_pytorch_on_the_test_set(mlp_run):
    _, run, results = mlp_run
    fp32 = results["onnx-fp32"]
    assert fp32["check"]["top1_agreement"] >= 0.999 and fp32["check"]["max_abs_logit_diff"] < 1e-3
    assert fp32["test"]["accuracy"] == pytest.approx(run.summary["test"]["accuracy"], abs=1e-9)
    # a model far below 2 GB is one file, so ONNX Runtime's pre-processing can read it before int8
    assert set(fp32["files"]) == {"model.onnx"}
    assert fp32["size_bytes"] == sum(fp32["files"].values())
    assert fp32["profile"]["runtime"].startswith("onnxruntime") and fp32["profile"]["latency_ms"] > 0
    assert fp32["pytorch_eager"]["latency_ms"] > 0 and fp32["profile"]["threads"] == fp32["pytorch_eager"]["threads"]


def test_int8_is_small_and_keeps_accuracy(mlp_run):
    _, run, results = mlp_run
    fp32, int8 = results["onnx-fp32"], results["onnx-int8"]
    assert fp32["params"] >= 50_000
    assert int8["size_bytes"] <= 0.35 * fp32["size_bytes"], (int8["size_bytes"], fp32["size_bytes"])
    assert fp32["test"]["accuracy"] - int8["test"]["accuracy"] <= 0.01
    assert int8["quantization"].startswith("dynamic int8")  # a pure MLP: no convolutions to calibrate
    assert int8["preprocessed"] and int8["notes"] == []  # quant_pre_process ran on the single-file export
    assert int8["int8"]["format"] in ("s8s8", "reduce-range") and int8["int8"]["cpu"]["arch"]
    assert int8["int8_check"]["ok"] and int8["int8_check"]["agreement"] == int8["check"]["top1_agreement"]


def test_variants_are_listed_under_their_run_everywhere(mlp_run):
    store, run, _ = mlp_run
    rows = comparison_rows([run])
    kinds = [(r["role"], r.get("variant")) for r in rows]
    assert kinds == [("teacher", None), ("kd", None), ("kd", "onnx-fp32"), ("kd", "onnx-int8")]
    assert rows[3]["size_mb"] < rows[2]["size_mb"] and rows[3]["_parent"] == "mlp"
    from workbench.analysis import plots

    fig = plots.pareto(rows, "size_mb")
    assert {t.name for t in fig.data} >= {"ONNX fp32", "ONNX int8", "distilled"} and "Thin lines" in plots.caption(fig)
    from workbench.analysis.report import build_report

    assert "ONNX int8" in build_report([run])
    assert [v["name"] for v in run.variants()] == ["onnx-fp32", "onnx-int8"]
    import io
    import zipfile

    files = zipfile.ZipFile(io.BytesIO(zip_variant(run.path / "variants" / "onnx-int8"))).namelist()
    assert set(files) == {"model.onnx", "metrics.json"}


def test_a_conv_student_gets_static_qdq_int8_calibrated_on_training_images(tmp_path, digits):
    from workbench.deploy.export import calibration_images, measure
    from workbench.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig("cnn", depth=1, width=8), digits.input_shape, 10).eval()
    fp32 = export_onnx(model, digits.input_shape, tmp_path / "fp32")
    path, done = quantize_int8(fp32, tmp_path / "int8", calibration_images(digits, 64))
    mode = done["mode"]
    assert mode.startswith("static int8, QDQ, per-channel") and "64 training images" in mode and done["preprocessed"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    m = measure(tmp_path / "int8", model, digits, None)
    assert m["check"]["top1_agreement"] > 0.9  # an untrained net: int8 keeps most of its decisions


@pytest.mark.slow
def test_prune_then_distil_is_smaller_and_reports_before_and_after(tmp_path):
    from workbench.store.runs import RunStore

    store = RunStore(tmp_path / "runs")
    run = run_in_process(store, TrainConfig(**BASE, model=ModelConfig("cnn", depth=1, width=16)), run_id="cnn")
    results = {m["variant"]: m for m in export_run(run, store, ExportOptions(prune=0.5, finetune_epochs=2))}
    pruned, full = results["pruned50-onnx-fp32"], results["onnx-fp32"]
    assert pruned["params"] < 0.5 * full["params"] and pruned["flops"] < full["flops"]
    ft = pruned["finetune"]
    assert ft["epochs"] == 2 and ft["method"] == "kd" and ft["params_after"] == pruned["params"]
    assert pruned["test"]["accuracy"] == pytest.approx(ft["test_acc_after"], abs=1e-6)
    assert ft["test_acc_after"] > ft["test_acc_before"]  # distilling again recovers what pruning took


@pytest.mark.slow
def test_the_commands_work_as_written(tmp_path):
    runs = str(tmp_path / "runs")
    kdw("distill", "--dataset", "digits", "--model", "mlp", "--width", "32", "--epochs", "3", "--no-scratch",
        "--run-id", "r1", "--runs-dir", runs)
    kdw("export", "r1", "--format", "onnx", "--runs-dir", runs)
    kdw("export", "r1", "--format", "onnx", "--int8", "--runs-dir", runs)
    out = kdw("compare", "r1", "--runs-dir", runs).stdout
    assert "ONNX fp32" in out and "ONNX int8" in out and "measured by running the artifact in ONNX Runtime" in out
    rows = json.loads(kdw("compare", "r1", "--json", "--runs-dir", runs).stdout)
    assert [r["variant"] for r in rows if r["role"] == "kd"] == [None, "onnx-fp32", "onnx-int8"]


# ---------------------------------------------------------------------------
# bad input gets one clear sentence

def _fails(*args, match):
    proc = kdw(*args, check=False)
    assert proc.returncode == 2 and match in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_exporting_a_failed_running_or_missing_run_is_refused(store):
    from workbench.store.runs import process_identity

    failed = store.create(TrainConfig(**BASE, model=ModelConfig("mlp", depth=1, width=8)).record(), run_id="f")
    failed.set_status("failed", error="diverged")
    running = store.create(TrainConfig(**BASE, model=ModelConfig("mlp", depth=1, width=8)).record(), run_id="r")
    running.set_status("running", **process_identity())
    for rid, state in (("f", "failed"), ("r", "running")):
        with pytest.raises(ValueError, match=f"run {rid} is {state}; only finished runs can be exported"):
            export_run(store.get(rid), store, ExportOptions())
    _fails("export", "nope", "--runs-dir", str(store.root), match="no run 'nope'")


def test_an_untraceable_model_names_the_operator(tmp_path):
    class Zeta(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.head(torch.special.zeta(x.flatten(1), x.flatten(1)))

    with pytest.raises(DeployError, match="cannot convert operator prims.zeta"):
        export_onnx(Zeta(), (1, 8, 8), tmp_path)


@pytest.mark.parametrize("kw, message", [({"calibration": 4}, "at least 16 images, got 4"),
                                         ({"prune": 0.0}, "in (0, 1), got 0.0"), ({"prune": 1.5}, "in (0, 1), got 1.5")])
def test_bad_options_are_refused(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ExportOptions(**kw)


def test_more_calibration_images_than_training_images_is_refused(digits):
    from workbench.deploy.export import calibration_images

    with pytest.raises(DeployError, match="the training set has"):
        calibration_images(digits, 10**6)


def test_a_missing_optional_dependency_says_how_to_install_it(monkeypatch, tmp_path):
    import importlib

    from workbench.deploy import export as deploy
    from workbench.models.zoo import build_model

    real = importlib.import_module
    monkeypatch.setattr(deploy.importlib, "import_module",
                        lambda name, *a: (_ for _ in ()).throw(ImportError(name)) if name.startswith("onnx")
                        else real(name, *a))
    with pytest.raises(DeployError, match=r"pip install -e '\.\[deploy\]'"):
        export_onnx(build_model(ModelConfig("mlp", depth=1, width=8), (1, 8, 8), 10), (1, 8, 8), tmp_path)


@pytest.mark.slow
def test_the_compare_page_lists_variants_and_offers_deploy_and_download(mlp_run, monkeypatch):
    from streamlit.testing.v1 import AppTest

    store, run, _ = mlp_run
    monkeypatch.setenv("KDW_RUNS_DIR", str(store.root))
    at = AppTest.from_string("from workbench.app.compare import page\npage()", default_timeout=120).run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert list(table["artifact"]) == ["PyTorch fp32", "PyTorch fp32", "ONNX fp32", "ONNX int8"]
    assert at.selectbox(key="cmp_deploy_run").value.endswith("· mlp")
    assert any("ONNX int8" in c.value and "ONNX Runtime" in c.value for c in at.caption)
    assert len([b for b in at.get("download_button")]) >= 3  # two variants and the report


AVX2_ONLY = "flags\t\t: fpu sse2 avx avx2 fma bmi2\n"
VNNI = "flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni avx_vnni\n"


def test_int8_settings_follow_the_cpu():
    from workbench.deploy.export import cpu_int8_features, int8_settings

    avx2 = {**cpu_int8_features(AVX2_ONLY), "arch": "x86_64", "x86": True}
    vnni = {**cpu_int8_features(VNNI), "arch": "x86_64", "x86": True}
    assert avx2["flags"] == ["avx", "avx2"] and not avx2["vnni"]
    assert vnni["vnni"] and "avx512_vnni" in vnni["flags"]
    assert int8_settings("auto", avx2)["reduce_range"] and "without VNNI" in int8_settings("auto", avx2)["why"]
    assert int8_settings("auto", vnni)["format"] == "s8s8"
    arm = {"arch": "aarch64", "x86": False, "vnni": False, "flags": None}
    assert int8_settings("auto", arm)["format"] == "s8s8"
    assert int8_settings("u8u8", avx2)["weights"] == "uint8" and int8_settings("u8u8", avx2)["why"] == "asked for"
    with pytest.raises(ValueError, match="int8 format must be one of"):
        ExportOptions(int8=True, int8_format="int4")


@pytest.mark.parametrize("cpuinfo, fmt, weights", [(AVX2_ONLY, "auto", "7-bit"), (VNNI, "auto", "8-bit"),
                                                    (VNNI, "u8u8", "uint8")])
def test_each_int8_path_is_what_it_says_and_keeps_the_models_decisions(tmp_path, digits, cpuinfo, fmt, weights):
    """Forced per CPU: on an AVX2-only x86 the weights use 7 bits (ONNX Runtime's reduce_range); with VNNI, 8."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from workbench.deploy.export import calibration_images, cpu_int8_features, measure
    from workbench.models.zoo import build_model

    cpu = {**cpu_int8_features(cpuinfo), "arch": "x86_64", "x86": True}
    torch.manual_seed(0)
    model = build_model(ModelConfig("cnn", depth=1, width=8), digits.input_shape, 10).eval()
    fp32 = export_onnx(model, digits.input_shape, tmp_path / "fp32")
    path, done = quantize_int8(fp32, tmp_path / "int8", calibration_images(digits, 64), fmt, cpu)
    graph = onnx.load(str(path)).graph
    conv_weights = {n.input[1] for n in graph.node if n.op_type == "Conv"}
    dq = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    ints = [numpy_helper.to_array(t) for t in graph.initializer if t.name in {dq.get(w) for w in conv_weights}]
    assert ints
    if weights == "uint8":
        assert all(a.dtype == np.uint8 for a in ints) and done["int8"]["format"] == "u8u8"
    else:
        assert all(a.dtype == np.int8 for a in ints)
        peak = max(int(np.abs(a.astype(np.int16)).max()) for a in ints)
        assert peak <= 64 if weights == "7-bit" else peak > 64, peak
    assert done["int8"]["cpu"] == cpu and done["int8"]["format"] in done["mode"]
    m = measure(tmp_path / "int8", model, digits, None)
    assert m["check"]["top1_agreement"] > 0.9  # an untrained net: int8 keeps most of its decisions


def test_an_int8_variant_that_does_not_hold_is_flagged_everywhere(mlp_run):
    from workbench.analysis.compare import build_comparison, format_table
    from workbench.analysis.report import build_report
    from workbench.deploy.export import int8_check

    _, run, _ = mlp_run
    low = int8_check(0.85, "s8s8")
    assert not low["ok"] and "reduce-range or u8u8" in low["advice"] and int8_check(0.99, "s8s8")["ok"]
    metrics_path = run.variants_path / "onnx-int8" / "metrics.json"
    kept = metrics_path.read_text()
    try:
        metrics_path.write_text(json.dumps({**json.loads(kept), "int8_check": low}))
        c = build_comparison([run])
        assert c.int8_warning and "85.0%" in c.int8_warning
        assert any(cell.get("artifact") == "ONNX int8 ⚠" for cell in c.cells())
        assert "⚠ warning: int8 does not hold" in format_table(c.rows)
        assert "int8 does not hold" in build_report([run])
    finally:
        metrics_path.write_text(kept)
    assert build_comparison([run]).int8_warning is None


def test_pruning_keeps_a_multiple_of_eight_channels():
    from workbench.deploy.export import prune_model
    from workbench.models.zoo import build_model

    conv = prune_model(build_model(ModelConfig("cnn", 1, 48), (1, 28, 28), 10), (1, 28, 28), 0.3)
    kept = [m.out_channels for m in conv.modules() if isinstance(m, torch.nn.Conv2d)]
    assert kept[0] == 32 and all(k % 8 == 0 for k in kept), kept  # 48 × 0.7 = 33.6: 32, not 33
    mlp = prune_model(build_model(ModelConfig("mlp", 2, 100), (64,), 10), (64,), 0.3)
    assert [m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear)] == [64, 64, 10]
