"""The compression pipeline: prune → heal → PTQ / QAT / QAD, every step a variant measured in ONNX Runtime; the
fake-quantized forward a step trains is the int8 artifact it deploys; bad pipelines are refused before any work."""

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("torch_pruning")

from conftest import kdw  # noqa: E402

from workbench.deploy import compress, qad  # noqa: E402
from workbench.deploy.compress import CompressOptions, Step, compress_run, parse_steps, plan  # noqa: E402
from workbench.deploy.export import export_onnx, int8_settings, ort_logits, ort_session, quantize_int8  # noqa: E402
from workbench.errors import DeployError  # noqa: E402
from workbench.jobs.queue import run_in_process  # noqa: E402
from workbench.models.zoo import ModelConfig, build_model  # noqa: E402
from workbench.train.loop import TrainConfig  # noqa: E402

BASE = dict(kind="kd", dataset="digits", teacher="digits-cnn", epochs=3, batch_size=64, profile=False)
PIPELINE = "prune:0.5,heal:kd,ptq:int8,qat:int8,qad:int8"


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """A digits CNN student distilled from the shipped teacher, then through the whole pipeline once, by the CLI."""
    from workbench.store.runs import RunStore

    store = RunStore(tmp_path_factory.mktemp("compress") / "runs")
    run_in_process(store, TrainConfig(**BASE, model=ModelConfig("cnn", depth=2, width=16)), run_id="cnn")
    proc = kdw("compress", "cnn", "--steps", PIPELINE, "--epochs", "1", "--calibration", "256",
               "--runs-dir", str(store.root), timeout=600)
    return store, store.get("cnn"), proc


def test_parse_steps_reads_a_pipeline_and_names_each_variant_by_its_path():
    steps = parse_steps("prune:0.5 → heal:KD, ptq:int8 -> qad:int8")
    assert steps == [Step("prune", "0.5"), Step("heal", "kd"), Step("ptq", "int8"), Step("qad", "int8")]
    assert [name for _, name in plan(steps)] == ["onnx-fp32", "prune50", "prune50+heal-kd", "prune50+heal-kd+ptq-int8",
                                                  "prune50+heal-kd+qad-int8"]


@pytest.mark.parametrize("text, message", [
    ("prune:0.5,shrink:2", "unknown step 'shrink:2'; the steps are prune:"),
    ("prune:1.5", "prune takes a fraction in (0, 1)"),
    ("heal:mse", "heal takes kd"),
    ("qad:int8,heal:kd", "'heal:kd' cannot follow qad:int8"),
    ("ptq:int2", "ptq takes int8 (classifiers) or int4"),
    ("heal:kd,heal:kd", "appears twice"),
    ("", "give at least one step"),
])
def test_bad_pipelines_are_refused_with_one_sentence(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_steps(text)


@pytest.mark.parametrize("family, shape", [("cnn", (1, 8, 8)), ("mlp", (1, 8, 8)), ("resnet", (3, 16, 16))])
def test_the_fake_quantized_forward_is_the_int8_artifact(tmp_path, family, shape):
    """What QAD trains is what ONNX Runtime runs: batch norm folded, per-channel weights and per-tensor activations
    rounded with the scales ONNX Runtime's quantizer picks. Stated tolerance: the mean |logit difference| is at most
    1% of the largest logit (compress.FAKE_QUANT_TOLERANCE), top-1 agrees on at least 99% of samples, and the
    fake-quantized forward is closer to the artifact than the float model is (most logits agree to float precision or
    differ by one step of the output's grid, where ONNX Runtime requantizes an integer sum)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(family, depth=2 if family != "resnet" else None, width=16 if family != "resnet"
                                    else None), shape, 10)
    x = torch.randn(512, *shape)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for i in range(0, 512, 64):  # a few steps, so that batch norm's statistics are not the identity
        loss = torch.nn.functional.cross_entropy(model(x[i:i + 64]), torch.randint(0, 10, (64,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    int8 = int8_settings("auto")
    calibration, test = x[:256], torch.randn(300, *shape)
    prepared = qad.calibrate(qad.prepare(model, int8), calibration)
    plain = qad.strip(prepared)
    export_onnx(plain, shape, tmp_path / "fp32")
    path, info = quantize_int8(tmp_path / "fp32" / "model.onnx", tmp_path / "int8", calibration, matched=True)
    artifact = ort_logits(ort_session(path), test)
    with torch.no_grad():
        fake, full = prepared(test), model(test)
    scale = artifact.abs().max()
    assert (fake - artifact).abs().mean() <= compress.FAKE_QUANT_TOLERANCE * scale
    assert (fake.argmax(1) == artifact.argmax(1)).float().mean() >= 0.99
    assert (fake - artifact).abs().mean() < (full - artifact).abs().mean()
    assert "as quantization-aware training sees them" in info["mode"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())  # folded, as ONNX Runtime folds it


def test_the_straight_through_estimator_passes_gradients_to_the_weights():
    layer = qad.FakeQuantLayer(torch.nn.Linear(4, 3), int8_settings("s8s8"))
    qad.calibrate(torch.nn.Sequential(layer), torch.randn(32, 4))
    layer(torch.randn(8, 4)).sum().backward()
    assert layer.layer.weight.grad is not None and layer.layer.weight.grad.abs().sum() > 0
    w = torch.tensor([[0.5, -1.0, 0.26]])  # per channel: scale = 1/127, so 0.26 rounds to 33/127
    assert torch.allclose(qad.fake_quant_weight(w, -127, 127), torch.tensor([[64 / 127, -1.0, 33 / 127]]))


def test_the_pipeline_makes_one_measured_variant_per_step(compressed):
    _, run, proc = compressed
    variants = {v["name"]: v for v in run.variants()}
    names = [name for _, name in plan(parse_steps(PIPELINE))]
    assert set(names) <= set(variants) and all(variants[n]["state"] == "done" for n in names)
    m = {n: variants[n]["metrics"] for n in names}
    fp32, pruned, healed = m["onnx-fp32"], m["prune50"], m["prune50+heal-kd"]
    assert pruned["params"] < 0.5 * fp32["params"] and pruned["size_bytes"] < fp32["size_bytes"]
    assert healed["test"]["accuracy"] > pruned["test"]["accuracy"]  # healing with the teacher recovers a cut model
    assert healed["training"]["method"] == "kd" and healed["step"] == "heal:kd"
    for leaf in ("ptq", "qat", "qad"):
        q = m[f"prune50+heal-kd+{leaf}-int8"]
        assert q["precision"] == "int8" and q["size_bytes"] < 0.5 * healed["size_bytes"]
        assert q["fake_quant_check"]["ok"] and q["fake_quant_check"]["top1_agreement"] >= 0.99
        assert q["profile"]["runtime"].startswith("onnxruntime") and "agreement" in q["test"]
        assert q["pipeline"] == PIPELINE
    assert m["prune50+heal-kd+qad-int8"]["training"]["method"] == "kd"
    assert m["prune50+heal-kd+qat-int8"]["training"]["method"] == "ce"
    assert "training" not in m["prune50+heal-kd+ptq-int8"]
    assert "prune50+heal-kd+qad-int8" in proc.stdout and "fake-quant = artifact" in proc.stdout


def test_a_pipeline_run_again_keeps_what_is_done_and_a_failed_step_keeps_the_steps_before_it(compressed, monkeypatch):
    store, run, _ = compressed
    healed = run.variants_path / "prune50+heal-kd" / "metrics.json"
    before = healed.read_text()

    def broken(self, *a, **k):
        raise RuntimeError("the quantizer ran out of disk")

    import shutil

    shutil.rmtree(run.variants_path / "prune50+heal-kd+qat-int8")  # as if the first pipeline had been killed there
    monkeypatch.setattr(compress._Pipeline, "_quantize", broken)
    with pytest.raises(RuntimeError, match="out of disk"):
        compress_run(run, store, parse_steps("prune:0.5,heal:kd,qat:int8,ptq:int8"), CompressOptions(epochs=1))
    variants = {v["name"]: v for v in run.variants()}
    assert healed.read_text() == before  # kept, not trained again
    assert variants["prune50+heal-kd"]["state"] == "done"
    failed = variants["prune50+heal-kd+qat-int8"]
    assert failed["state"] == "failed" and "step qat:int8 failed" in failed["error"] and "out of disk" in failed["error"]
    assert variants["prune50+heal-kd+ptq-int8"]["state"] == "done"  # made by the first pipeline, kept
    monkeypatch.undo()
    results = compress_run(run, store, parse_steps("prune:0.5,heal:kd,qat:int8"), CompressOptions(epochs=1))
    assert [r["variant"] for r in results][-1] == "prune50+heal-kd+qat-int8" and healed.read_text() == before


def test_compressing_what_cannot_be_compressed_is_refused_before_any_work(store, compressed):
    from workbench.store.runs import process_identity

    compressed_store, _, _ = compressed
    running = store.create(TrainConfig(**BASE, model=ModelConfig("mlp", depth=1, width=8)).record(), run_id="r")
    running.set_status("running", **process_identity())
    with pytest.raises(ValueError, match="run r is running; only finished runs"):
        compress_run(running, store, parse_steps("ptq:int8"))
    teacher = store.create(TrainConfig(kind="teacher", dataset="digits", epochs=1, profile=False,
                                       model=ModelConfig("mlp", depth=1, width=8)).record(), run_id="t")
    teacher.set_status("done")
    teacher.weights_path().write_bytes(b"")
    with pytest.raises(DeployError, match="qad:int8 distil from the run's teacher, and run t has none"):
        compress.check_compress(teacher, parse_steps("qad:int8"))
    proc = kdw("compress", "cnn", "--steps", "qad:int8,prune:0.5", "--runs-dir", str(compressed_store.root),
               check=False)
    assert proc.returncode == 2 and "'prune:0.5' cannot follow qad:int8" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_pipeline_is_in_kdw_compare_and_the_report(compressed):
    from workbench.analysis.compare import comparison_rows, pipeline_table
    from workbench.analysis.report import build_report

    _, run, _ = compressed
    rows = comparison_rows([run])
    table = pipeline_table(run, rows)
    assert [t["variant"] for t in table][:3] == ["onnx-fp32", "prune50", "prune50+heal-kd"]
    qad_row = next(t for t in table if t["variant"] == "prune50+heal-kd+qad-int8")
    assert qad_row["artifact"] == "pruned 50% · healed (KD) · QAD int8" and qad_row["trained = deployed %"] >= 99
    assert table[0]["Δ acc"] == 0.0  # the run's own export keeps its accuracy
    report = build_report([run])
    assert "<h2>Compression</h2>" in report and PIPELINE in report and "What each compression step costs" in report


# ---------------------------------------------------------------------------
# language models: 4-bit weights

@pytest.fixture(scope="module")
def lm_runs(tmp_path_factory):
    """A tiny LLaMA teacher and two distilled students: one 32 wide (its layers take groups of 32), one 16 wide."""
    pytest.importorskip("transformers")
    from text_fixtures import lm_corpus, tiny_llama

    root = tmp_path_factory.mktemp("lm-compress")
    corpus = lm_corpus(root / "corpus.txt")
    llama = tiny_llama(root / "llama", corpus.read_text().split(), hidden=64)
    runs = root / "runs"
    common = ("--dataset", "text-file", "--data-dir", str(corpus), "--runs-dir", str(runs), "--seq-len", "16",
              "--train-tokens", "2000", "--val-tokens", "200", "--no-profile")
    kdw("teacher", *common, "--model", f"hf:{llama}", "--epochs", "3", "--lr", "3e-3", "--run-id", "tl")
    for width in (32, 16):
        kdw("distill", *common, "--teacher", "tl", "--model", "llama", "--depth", "2", "--width", str(width),
            "--heads", "2", "--topk", "8", "--epochs", "2", "--no-scratch", "--run-id", f"w{width}")
    return runs


def test_fake_int4_rounds_weights_as_onnx_runtimes_matmulnbits_quantizer_does():
    np = pytest.importorskip("numpy")
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    w = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))  # (out, in), as nn.Linear holds it
    b = np.ascontiguousarray(w.T.numpy())  # ONNX's MatMul weight: (in, out), blocks of 32 along the inputs
    packed = np.zeros((5, 2, 16), dtype=np.uint8)
    scales = np.zeros((5, 2), dtype=np.float32)
    quantize_matmul_4bits(packed, b, scales, np.zeros((5, 1), dtype=np.uint8), 32, 5, 64, True)
    q = np.stack([packed & 0x0F, packed >> 4], -1).reshape(5, 2, 32).astype(np.int32) - 8
    theirs = torch.from_numpy((q * scales[:, :, None]).reshape(5, 64)).float()
    assert torch.allclose(qad.fake_quant_int4(w), theirs, atol=1e-6)
    layer = qad.Int4Linear(torch.nn.Linear(64, 5))
    layer(torch.randn(3, 64)).sum().backward()
    assert layer.layer.weight.grad.abs().sum() > 0  # the straight-through estimator


def test_a_language_model_goes_through_ptq_qat_and_qad_at_int4(lm_runs):
    from workbench.store.runs import RunStore

    store = RunStore(lm_runs)
    run = store.get("w32")
    results = {m["variant"]: m for m in compress_run(run, store, parse_steps("ptq:int4,qat:int4,qad:int4"),
                                                     CompressOptions(epochs=1))}
    assert list(results) == ["onnx-fp32", "ptq-int4", "qat-int4", "qad-int4"]
    fp32 = results["onnx-fp32"]
    for name in ("ptq-int4", "qat-int4", "qad-int4"):
        m = results[name]
        assert m["precision"] == "int4" and "MatMulNBits" in m["quantization"] and "on 14 MatMuls" in m["quantization"] and "tied output layer float" in m["quantization"]
        assert m["size_bytes"] < fp32["size_bytes"] and m["test"]["perplexity"] > 1
        assert m["fake_quant_check"]["max_abs_logit_diff"] < 1e-4  # weight-only rounding: the same numbers exactly
        assert m["profile"]["tokens_per_s_b1"] > 0
    assert results["qad-int4"]["training"]["method"] == "kd" and results["qat-int4"]["training"]["method"] == "ce"
    assert abs(results["ptq-int4"]["test"]["perplexity"] - fp32["test"]["perplexity"]) < 0.2 * fp32["test"]["perplexity"]
    from workbench.analysis import plots
    from workbench.analysis.compare import comparison_rows, pipeline_table

    rows = comparison_rows([run])
    table = pipeline_table(run, rows)
    assert [t["artifact"] for t in table] == ["ONNX fp32", "PTQ int4", "QAT int4", "QAD int4"]
    assert table[0]["Δ ppl"] == pytest.approx(fp32["test"]["perplexity"] - run.summary["test"]["perplexity"], abs=0.01)
    assert all(t["trained = deployed %"] == 100.0 for t in table[1:]) and "acc %" not in table[0]
    fig = plots.compress_pareto(rows, "size_mb")
    assert fig.layout.yaxis.autorange == "reversed" and {t.name for t in fig.data} >= {"PTQ int4", "QAD int4"}
    # healing a language model keeps its weights (a tied head included) for the steps after it, and for a rerun
    healed = compress_run(run, store, parse_steps("heal:kd,ptq:int4"), CompressOptions(epochs=1))
    assert [m["variant"] for m in healed] == ["onnx-fp32", "heal-kd", "heal-kd+ptq-int4"]
    again = compress_run(run, store, parse_steps("heal:kd,ptq:int4"), CompressOptions(epochs=1))
    assert again[-1]["created"] == healed[-1]["created"]  # kept, not made again


@pytest.mark.parametrize("run_id, steps, message", [
    ("w16", "ptq:int4", "4-bit weights cannot be used for run w16: 13 linear layer(s) have a number of inputs that is "
                        "not a multiple of 32"),
    ("w32", "ptq:int8", "a language model is quantized to 4-bit weights here"),
    ("w32", "prune:0.5,heal:kd", "a language model is not channel-pruned here"),
])
def test_a_language_model_pipeline_that_cannot_work_is_refused(lm_runs, run_id, steps, message):
    from workbench.store.runs import RunStore

    store = RunStore(lm_runs)
    with pytest.raises(DeployError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compress.check_compress(store.get(run_id), parse_steps(steps))


def test_int4_for_a_classifier_is_refused(compressed):
    _, run, _ = compressed
    with pytest.raises(DeployError, match="4-bit weights are for language models' linear layers"):
        compress.check_compress(run, parse_steps("ptq:int4"))


def _wait_for(what, timeout: float = 300):
    """Poll `what()` until it returns something true (the value), or fail at the deadline."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def _state(run, name):
    return next((v["state"] for v in run.variants() if v["name"] == name), None)


@pytest.mark.slow
def test_a_pipeline_killed_mid_step_goes_on_from_that_step_and_a_cancel_stops_it(compressed):
    import os
    import signal

    store, run, _ = compressed
    steps = parse_steps("prune:0.5,heal:ce,qad:int8")
    kept = (run.variants_path / "prune50" / "metrics.json").read_text()
    compress.start_compress(store, run.run_id, steps, CompressOptions(epochs=20))
    _wait_for(lambda: _state(run, "prune50+heal-ce") == "running")
    status = json.loads((run.variants_path / "prune50+heal-ce" / "status.json").read_text())
    os.kill(status["pid"], signal.SIGKILL)  # the machine's OOM killer, or a power cut
    _wait_for(lambda: _state(run, "prune50+heal-ce") == "failed")  # its process is gone: it reads failed
    assert "ended without finishing" in next(v["error"] for v in run.variants() if v["name"] == "prune50+heal-ce")

    _wait_for(lambda: not compress.export_busy(run))  # its data-loading children exit too, and let go of the lock
    compress.start_compress(store, run.run_id, steps, CompressOptions(epochs=20))  # again: from the step it reached
    _wait_for(lambda: _state(run, "prune50+heal-ce") == "running")
    assert (run.variants_path / "prune50" / "metrics.json").read_text() == kept
    assert compress.compress_busy(run)
    said = compress.cancel_compress(run)
    assert said.startswith("cancelled 2 step(s)") and "stopped the pipeline's process" in said
    assert _state(run, "prune50+heal-ce") == "cancelled" and _state(run, "prune50+heal-ce+qad-int8") == "cancelled"
    pid = json.loads((run.variants_path / "prune50+heal-ce" / "status.json").read_text()).get("pid")
    assert pid is None  # a cancelled status names no process
    _wait_for(lambda: not compress.export_busy(run))  # the process let go of the run's lock: it has ended
    assert _state(run, "prune50+heal-ce") == "cancelled" and _state(run, "prune50") == "done"
    assert compress.cancel_compress(run).startswith("nothing to cancel")
