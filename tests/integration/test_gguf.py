"""A language-model student as a GGUF file: llama.cpp's names and layout, loaded back by transformers' own GGUF
loader (model and tokenizer) with the student's logits; what cannot be written is refused in one sentence."""

import pytest

pytest.importorskip("gguf")
pytest.importorskip("transformers")

from conftest import kdw  # noqa: E402
from text_fixtures import lm_corpus, tiny_llama, tiny_llama_bpe  # noqa: E402

from workbench.errors import DeployError  # noqa: E402
from workbench.store.runs import RunStore  # noqa: E402

COMMON = ("--dataset", "text-file", "--seq-len", "16", "--train-tokens", "2000", "--val-tokens", "200", "--no-profile")


@pytest.fixture(scope="module")
def bpe_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    corpus = lm_corpus(root / "corpus.txt")
    runs = root / "runs"
    common = (*COMMON, "--data-dir", str(corpus), "--runs-dir", str(runs))
    bpe = tiny_llama_bpe(root / "bpe", corpus.read_text().split("\n\n"))
    kdw("teacher", *common, "--model", f"hf:{bpe}", "--epochs", "2", "--lr", "3e-3", "--run-id", "tb")
    kdw("distill", *common, "--teacher", "tb", "--model", "llama", "--depth", "2", "--width", "32", "--heads", "2",
        "--topk", "8", "--epochs", "1", "--no-scratch", "--run-id", "sb")
    words = tiny_llama(root / "words", corpus.read_text().split())
    kdw("teacher", *common, "--model", f"hf:{words}", "--epochs", "0", "--run-id", "tw")
    return runs, bpe


def test_a_student_exported_as_gguf_loads_back_in_transformers_with_its_logits_and_tokenizer(bpe_runs):
    from transformers import AutoTokenizer

    runs, bpe = bpe_runs
    proc = kdw("export", "sb", "--format", "gguf", "--runs-dir", str(runs))
    assert "gguf-f16" in proc.stdout and "llama.cpp" in proc.stdout
    store = RunStore(runs)
    run = store.get("sb")
    m = {v["name"]: v["metrics"] for v in run.variants()}["gguf-f16"]
    assert m["check"]["loader"].endswith("(gguf_file)") and m["check"]["top1_agreement"] == 1.0
    assert m["check"]["max_abs_logit_diff"] < 1e-2  # f16 rounding of the weights, nothing else
    assert m["test"]["perplexity"] == pytest.approx(run.summary["test"]["perplexity"], rel=1e-3)
    assert m["written"]["tied_output"] and m["size_bytes"] == (run.variants_path / "gguf-f16" / "model.gguf").stat().st_size
    text = "the cat sees the ball and likes a fish ."
    theirs = AutoTokenizer.from_pretrained(str(run.variants_path / "gguf-f16"), gguf_file="model.gguf")
    assert theirs(text)["input_ids"] == AutoTokenizer.from_pretrained(str(bpe))(text)["input_ids"]
    import gguf

    reader = gguf.GGUFReader(str(run.variants_path / "gguf-f16" / "model.gguf"))
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight", "output_norm.weight"} <= names
    assert "output.weight" not in names  # tied: llama.cpp reuses the token embedding


def test_gguf_q8_0_is_smaller_and_agrees(bpe_runs):
    from workbench.deploy.gguf import export_gguf

    runs, _ = bpe_runs
    store = RunStore(runs)
    run = store.get("sb")
    q8, f16 = export_gguf(run, store, "q8_0"), export_gguf(run, store, "f16")
    assert q8["size_bytes"] < 0.75 * f16["size_bytes"] and q8["check"]["top1_agreement"] >= 0.97


def test_what_gguf_cannot_hold_is_refused(bpe_runs, store):
    from workbench.deploy.gguf import export_gguf, write_gguf

    runs, _ = bpe_runs
    lm_store = RunStore(runs)
    words = lm_store.get("tw")  # a word-level tokenizer: GGUF's tokenizer metadata holds byte-level BPE
    with pytest.raises(DeployError, match="GGUF export writes byte-level BPE tokenizers"):
        export_gguf(words, lm_store)
    with pytest.raises(DeployError, match="the GGUF type must be one of f32, f16, q8_0"):
        write_gguf(lm_store.get("sb").load_model("best"), "", None, "q4_k")
    proc = kdw("export", "sb", "--format", "gguf", "--int8", "--runs-dir", str(runs), check=False)
    assert proc.returncode == 2 and "--int8 and --prune are ONNX variants" in proc.stderr


def test_gguf_for_a_classifier_is_refused(store):
    from workbench.deploy.gguf import export_gguf
    from workbench.jobs.queue import run_in_process
    from workbench.models.zoo import ModelConfig
    from workbench.train.loop import TrainConfig

    run = run_in_process(store, TrainConfig(kind="scratch", dataset="digits", epochs=1, profile=False,
                                            model=ModelConfig("mlp", depth=1, width=16)), run_id="mlp")
    with pytest.raises(DeployError, match="--format gguf writes language models .*export it with --format onnx"):
        export_gguf(run, store)


@pytest.mark.slow
def test_the_deploy_panel_exports_a_language_model_as_gguf_in_the_background(bpe_runs):
    import io
    import time
    import zipfile

    from workbench.deploy.export import start_format_export, zip_variant

    runs, _ = bpe_runs
    store = RunStore(runs)
    run = store.get("sb")
    import shutil

    shutil.rmtree(run.variants_path / "gguf-q80", ignore_errors=True)
    start_format_export(store, "sb", "gguf-q8_0")
    assert {v["name"]: v["state"] for v in run.variants()}["gguf-q80"] in ("queued", "running", "done")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = {v["name"]: v["state"] for v in run.variants()}["gguf-q80"]
        if state in ("done", "failed"):
            break
        time.sleep(0.3)
    assert state == "done", run.variants()
    files = zipfile.ZipFile(io.BytesIO(zip_variant(run.variants_path / "gguf-q80"))).namelist()
    assert sorted(files) == ["metrics.json", "model.gguf"]
    with pytest.raises(DeployError, match="the format must be one of hf, gguf, gguf-q8_0"):
        start_format_export(store, "sb", "safetensors")
