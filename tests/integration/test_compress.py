"""The compression pipeline: prune → heal → PTQ / QAT / QAD, every step a variant measured in ONNX Runtime; the
fake-quantized forward a step trains is the int8 artifact it deploys; bad pipelines are refused before any work."""


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
    ("ptq:int4", "4-bit weights are for language-model students"),
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
    lm = store.create(TrainConfig(kind="kd", dataset="fortunes", teacher="smol",
                                  model=ModelConfig("llama", 2, 64)).record(), run_id="lm")
    lm.set_status("done")
    lm.weights_path().write_bytes(b"")
    with pytest.raises(DeployError, match="compress takes image, table and text classifiers"):
        compress.check_compress(lm, parse_steps("ptq:int8"))
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
