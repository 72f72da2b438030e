"""The Streamlit app through AppTest: every page renders without exceptions, and a launch runs a real job."""

import time
from dataclasses import replace

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from workbench.store.runs import RunStore  # noqa: E402

TIMEOUT = 120


def page_app(module: str) -> AppTest:
    return AppTest.from_string(f"from workbench.app.{module} import page\npage()", default_timeout=TIMEOUT)


def _no_errors(at: AppTest):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def _wait_done(runs, timeout: float = 180) -> None:
    """Wait for the queued runs to finish; every one must end done."""
    deadline = time.monotonic() + timeout
    while any(r.state not in ("done", "failed", "cancelled", "diverged") for r in runs) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert all(r.state == "done" for r in runs), [r.status() for r in runs]


def test_app_entry_routes_to_dark_knowledge_with_sidebar():
    at = AppTest.from_file("../../app.py", default_timeout=TIMEOUT).run()
    _no_errors(at)
    assert at.title[0].value == "Dark knowledge"
    assert any("(1 − α)" in c.value for c in at.sidebar.code)


def test_dark_knowledge_page_shows_softened_probabilities_on_digits():
    at = page_app("dark_knowledge").run()
    at.selectbox(key="dk_dataset").select("digits").run()
    _no_errors(at)
    assert at.slider(key="dk_T").value == 4.0
    assert at.number_input(key="dk_index").value == 1  # digits' test image 0 fools the teacher; 1 does not
    assert any("(right)" in m.value for m in at.markdown)
    assert _charts(at) >= 4  # image, bars, ranking, T² chart
    h1 = float(at.metric[0].value.split()[0])
    at.slider(key="dk_T").set_value(10.0).run()
    _no_errors(at)
    assert float(at.metric[1].value.split()[0]) > h1  # a higher T flattens: more entropy
    assert any("10^2" in l.value or "10^{2}" in l.value or "10^2" in l.value for l in at.latex)
    at.number_input(key="dk_index").set_value(5).run()
    _no_errors(at)
    at.button(key="dk_random").click().run()
    _no_errors(at)


def test_train_page_lists_only_devices_that_exist_and_shows_live_params():
    at = page_app("train").run()
    at.selectbox(key="tr_dataset").select("digits").run()
    _no_errors(at)
    assert "cuda" not in at.selectbox(key="tr_device").options or __import__("torch").cuda.is_available()
    before = [c.value for c in at.caption if "parameters" in c.value]
    at.number_input(key="tr_student_width_mlp").set_value(128).run()
    after = [c.value for c in at.caption if "parameters" in c.value]
    assert before and after and before != after
    at.slider(key="tr_method_alpha").set_value(0.5).run()
    assert any("(1 - 0.5)" in l.value for l in at.latex)


@pytest.mark.slow
def test_launching_a_tiny_digits_job_runs_it_through_the_job_runner(runs_dir):
    at = page_app("train").run()
    at.selectbox(key="tr_dataset").select("digits").run()
    at.number_input(key="tr_student_width_mlp").set_value(16).run()
    at.number_input(key="tr_epochs").set_value(2).run()
    at.button(key="tr_launch").click().run()
    _no_errors(at)
    store = RunStore(runs_dir)
    runs = store.list()
    assert sorted(r.config["kind"] for r in runs) == ["kd", "scratch"]
    # the press shows its effect under the button, in the same run: a card with one line per job
    assert any(c.value.startswith("**Launched · ") for c in at.markdown)
    assert sum(c.value.startswith(("mlp(", "scratch", "KD", "kd")) or " — " in c.value for c in at.caption) >= 2
    deadline = time.monotonic() + 180
    while any(r.state not in ("done", "failed", "cancelled") for r in runs) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert all(r.state == "done" for r in runs), [r.status() for r in runs]
    at.run()
    _no_errors(at)
    assert sum("run finished: test accuracy" in s.value for s in at.success) == 2  # one box per run
    assert sum("done: " in c.value and "% test accuracy" in c.value for c in at.caption) == 2  # and on the card
    # a fresh session (a reload) finds the jobs again from the run store
    again = page_app("train").run()
    texts = [p.proto.text for p in again.get("progress")]
    assert all(any(r.run_id in t for t in texts) for r in runs), texts
    assert any("run finished" in s.value for s in again.success)


def test_a_run_that_learned_nothing_is_an_amber_box_of_its_own_beside_its_twin(store):
    """A torchvision student that predicts one digit for every image is not a green "Finished"."""
    from workbench.jobs.queue import execute_run
    from workbench.models.zoo import ModelConfig
    from workbench.train.loop import TrainConfig

    runs = []
    for kind in ("scratch", "kd"):
        cfg = TrainConfig(kind=kind, dataset="digits", model=ModelConfig("mlp", depth=1, width=32), epochs=3,
                          teacher="digits-cnn", profile=False, group="train-useless")  # a scratch twin that learns
        run = store.create(cfg.record(), prefix=kind)
        assert execute_run(run, store) == "done"
        runs.append(run)
    summary = runs[1].summary  # the distilled one predicts class 3 for every test image
    cm = summary["test"]["confusion_matrix"]
    summary["test"].update(accuracy=0.1031, confusion_matrix=[[0, 0, 0, sum(r), 0, 0, 0, 0, 0, 0] for r in cm],
                           per_class_accuracy=[0.0, 0.0, 0.0, 1.0] + [0.0] * 6)
    runs[1].write_summary(summary)
    at = page_app("train")
    at.session_state["tr_group"] = "train-useless"
    at.run()
    assert not at.exception
    assert [s.value for s in at.success if "scratch run finished" in s.value]
    (amber,) = [w.value for w in at.warning if "did not learn" in w.value]
    assert amber.startswith("The distilled run did not learn: test accuracy 10.31% is chance level for 10 classes")
    assert not [s for s in at.success if "distilled" in s.value]


def test_a_run_whose_task_recorded_that_it_did_not_learn_is_amber(store):
    """A language model no better than a unigram model: the task records why in its summary, and the Train page
    shows it in amber instead of a green "test perplexity 18,663.7" (the trial's finding)."""
    from workbench.jobs.queue import execute_run
    from workbench.models.zoo import ModelConfig
    from workbench.train.loop import TrainConfig

    cfg = TrainConfig(kind="scratch", dataset="digits", model=ModelConfig("mlp", depth=1, width=8), epochs=1,
                      profile=False, group="train-lm-useless")
    run = store.create(cfg.record(), prefix="scratch")
    assert execute_run(run, store) == "done"
    summary = run.summary
    summary["test"] = {"perplexity": 18_663.7, "nll": 9.8}
    summary["did_not_learn"] = ("its test perplexity 18,663.7 is no better than counting tokens (a unigram model of "
                                "the training text scores 1,200.0 on the same test tokens); it took 9 optimiser "
                                "steps: try more tokens or epochs (at least 20 steps), another learning rate, or a "
                                "smaller cut")
    run.write_summary(summary)
    at = page_app("train")
    at.session_state["tr_group"] = "train-lm-useless"
    at.run()
    assert not at.exception
    (amber,) = [w.value for w in at.warning if "did not learn" in w.value]
    assert "no better than counting tokens" in amber and "at least 20 steps" in amber
    assert not [s for s in at.success if "perplexity" in s.value]


@pytest.mark.slow
def test_compare_and_sweep_pages_show_finished_runs(runs_dir):
    from conftest import kdw

    kdw("sweep", "--engine", "local", "--dataset", "digits", "--model", "mlp", "--depth", "1", "--width", "16", "--epochs", "2",
        "--temperatures", "2", "4", "--alphas", "0.9", "--seeds", "2", "--runs-dir", str(runs_dir))
    at = page_app("compare").run()
    _no_errors(at)
    assert len(at.dataframe) == 1 and _charts(at) >= 3
    assert at.get("download_button")
    at.toggle(key="cmp_agg").set_value(True).run()
    _no_errors(at)
    at = page_app("sweep").run()
    _no_errors(at)
    assert _charts(at) >= 3  # two heatmaps and the parallel coordinates


def test_failing_job_shows_its_error_not_a_traceback(runs_dir):
    store = RunStore(runs_dir)
    run = store.create({"kind": "kd", "dataset": "digits", "group": "train-x", "model": {"family": "mlp"},
                        "teacher": "digits-cnn", "model_label": "mlp"}, prefix="kd")
    run.set_status("failed", error="the loss became nan in epoch 1: training diverged.")
    at = page_app("train").run()
    assert not at.exception
    assert any("training diverged" in e.value for e in at.error)
    assert not any("Traceback" in e.value for e in at.error)


def test_pages_work_without_fashion_mnist_and_say_how_to_get_it(monkeypatch):
    from workbench.data import readers as data

    monkeypatch.setattr(data, "fashion_mnist_dirs", lambda root=None: [])
    at = page_app("dark_knowledge").run()
    _no_errors(at)
    assert at.selectbox(key="dk_dataset").options == ["digits"]
    assert any("dataset-fashion-mnist" in c.value for c in at.caption)


def test_train_page_method_dropdown_shows_the_methods_own_hyperparameters():
    at = page_app("train").run()
    at.selectbox(key="tr_dataset").select("digits").run()
    at.selectbox(key="tr_method").select("rkd").run()
    _no_errors(at)
    assert not [s for s in at.slider if s.key in ("tr_method_T", "tr_method_alpha")]  # vanilla KD's knobs only
    assert any("Relational Knowledge Distillation" in c.value for c in at.caption)
    assert at.number_input(key="tr_method_rkd_distance_weight").value == 25.0
    at.number_input(key="tr_method_rkd_angle_weight").set_value(0.0).run()
    assert any("0·angle" in m.value for m in at.markdown)  # the run's own objective, with its values
    at.selectbox(key="tr_student_family").select("mlp").run()
    at.selectbox(key="tr_method").select("at").run()
    at.button(key="tr_launch").click().run()
    assert any("needs convolutional stages" in e.value for e in at.error)  # refused before any job exists
    at.radio(key="tr_strategy").set_value("teacher assistant").run()
    assert at.selectbox(key="tr_assistant_family").value == "cnn"


@pytest.mark.parametrize("name, want", [("teacher.safetensors", "teacher.safetensors"),
                                        ("../../etc/passwd", "passwd.safetensors"),
                                        ("my teacher (v2).safetensors", "my-teacher-v2-.safetensors"),
                                        ("..", "teacher.safetensors")])
def test_uploaded_file_names_are_reduced_to_safe_names(name, want):
    from workbench.app.common import safe_upload_name

    got = safe_upload_name(name)
    assert got == want and "/" not in got and not got.startswith(".")


def test_an_uploaded_non_safetensors_file_is_refused_without_unpickling(tmp_path):
    import io

    import torch as _torch

    from workbench.errors import ModelError
    from workbench.models.zoo import load_checkpoint

    buf = io.BytesIO()
    _torch.save({"w": _torch.zeros(1)}, buf)  # what a .pt upload would contain
    with pytest.raises(ModelError, match="not a valid safetensors checkpoint"):
        load_checkpoint(buf.getvalue())


def test_tables_train_and_compare_pages_work_on_wine(runs_dir):
    from conftest import kdw

    r = ["--runs-dir", str(runs_dir)]
    kdw("teacher", "--dataset", "wine", "--model", "mlp", "--epochs", "10", "--run-id", "tw", *r)
    kdw("distill", "--dataset", "wine", "--teacher", "tw", "--model", "mlp", "--width", "8", "--epochs", "10",
        "--group", "wine-g", *r)
    at = page_app("train").run()
    at.selectbox(key="tr_dataset").select("wine").run()
    _no_errors(at)
    assert any("13 numeric features" in c.value for c in at.caption)  # no image size or channels for a table
    assert not any(e.key and e.key.startswith("tr_image_size") for e in at.number_input)
    assert any("tw" in str(o) for s in at.selectbox for o in (s.options or []))  # the wine teacher run is offered
    at = page_app("compare").run()
    _no_errors(at)
    assert len(at.dataframe) >= 1


def test_the_train_page_takes_your_own_table_and_names_a_missing_label_column(runs_dir, tmp_path):
    import numpy as np
    from sklearn.datasets import load_wine

    bunch = load_wine()
    table = tmp_path / "mine.csv"
    cols = [f"f{i}" for i in range(bunch.data.shape[1])]
    rows = [",".join([*map(str, np.round(x, 4)), str(y)]) for x, y in zip(bunch.data, bunch.target)]
    table.write_text(",".join([*cols, "outcome"]) + "\n" + "\n".join(rows) + "\n")
    at = page_app("train").run()
    at.selectbox(key="tr_dataset").select("table").run()
    at.text_input(key="tr_dataset_path").input(str(table)).run()
    assert any("has no column 'label'" in e.value for e in at.error)  # the default column is not there
    at.text_input(key="tr_dataset_label_column").input("outcome").run()
    _no_errors(at)
    assert any("13 numeric features" in c.value for c in at.caption)
    assert any("--label-column outcome" in w.value for w in at.warning)  # no teacher yet: the command says how


def test_the_train_page_distils_a_text_classifier_from_a_text_teacher(runs_dir, tmp_path):
    """Text on the Train page: a CSV of texts, the teacher run's tokenizer, a text student with its parameters per
    sentence, only the methods that fit text, and a launch that trains the scratch twin and the distilled run."""
    pytest.importorskip("transformers")
    from text_fixtures import text_csv, tiny_bert

    from workbench.jobs.queue import run_in_process
    from workbench.models.zoo import parse_model
    from workbench.train.loop import TrainConfig

    path = text_csv(tmp_path / "texts.csv", n_per_class=100)
    bert = tiny_bert(tmp_path / "bert", [r.rsplit(",", 1)[0] for r in path.read_text().splitlines()[1:]])
    run_in_process(RunStore(runs_dir), TrainConfig(kind="teacher", dataset="text-csv", data_dir=str(path),
                                                   model=parse_model(f"hf:{bert}"), epochs=4, batch_size=16,
                                                   lr=3e-3, profile=False), run_id="bert")
    at = page_app("train").run()
    at.selectbox(key="tr_dataset").select("text-csv").run()
    at.text_input(key="tr_dataset_path").input(str(path)).run()
    _no_errors(at)
    assert at.selectbox(key="tr_teacher").value.startswith("bert (teacher run")
    assert any("300 texts in 3 classes" in c.value and "bert's tokenizer" in c.value for c in at.caption)
    assert any("bag(d=1, w=128)" in c.value and "per sentence" in c.value for c in at.caption)
    methods = at.selectbox(key="tr_method").options
    assert "tinybert" in str(methods) and not any(o.startswith("at ·") for o in methods)
    at.selectbox(key="tr_student_family_text").select("transformer").run()
    at.number_input(key="tr_student_width_transformer").set_value(32).run()
    at.number_input(key="tr_epochs").set_value(3).run()
    at.number_input(key="tr_labels").set_value(0).run()
    _no_errors(at)
    at.button(key="tr_launch").click().run()
    _no_errors(at)
    runs = [r for r in RunStore(runs_dir).list() if r.config["kind"] != "teacher"]
    assert sorted(r.config["kind"] for r in runs) == ["kd", "scratch"]
    _wait_done(runs)
    assert all(r.summary["task"] == "text-classification" for r in runs)


def test_dark_knowledge_shows_a_language_models_next_token_distribution(runs_dir, tmp_path):
    """Next token: a tiny LLaMA teacher run and a student of it; the teacher's top tokens at T = 1 and at T, the
    student's beside them, and an empty prompt refused in one sentence."""
    pytest.importorskip("transformers")
    from text_fixtures import lm_teacher

    from workbench.jobs.queue import run_in_process
    from workbench.models.zoo import ModelConfig
    from workbench.train.loop import TrainConfig

    store = RunStore(runs_dir)
    lm_teacher(runs_dir, tmp_path)
    teacher = store.get("tl").config
    run_in_process(store, TrainConfig(kind="scratch", model=ModelConfig("llama", depth=1, width=16, heads=2),
                                      teacher="tl", epochs=1, topk=8, profile=False,
                                      **{k: teacher[k] for k in ("dataset", "data_dir", "seq_len", "train_tokens",
                                                                 "val_tokens")}), run_id="st")
    at = page_app("dark_knowledge").run()
    assert at.slider(key="dk_T").value == 4.0  # Images: the image default
    at.radio(key="dk_mode").set_value("tokens").run()
    _no_errors(at)
    assert at.slider(key="dk_tok_T").value == 1.0  # a language model's own default, not the Images slider's 4
    assert "both bars are the same" in at.get("plotly_chart")[0].proto.spec
    at.slider(key="dk_tok_T").set_value(4.0).run()
    assert at.selectbox(key="dk_tok_teacher").value.endswith("tl")
    assert any("most likely next token" in m.value for m in at.markdown)
    assert _charts(at) == 2  # the next-token bars and the T² chart
    at.text_area(key="dk_prompt").input("the cat sees").run()
    at.selectbox(key="dk_tok_student").select_index(1).run()
    _no_errors(at)
    bars = at.get("plotly_chart")[0].proto.spec
    assert "student, T = 4" in bars
    at.text_area(key="dk_prompt").input("   ").run()
    assert any("the prompt has no tokens" in e.value for e in at.error)


def test_the_train_page_distils_a_language_model_and_compare_shows_its_generations(runs_dir, tmp_path):
    """Train → a language model: a corpus file, the tiny LLaMA teacher run, a llama student and the token-level
    methods; its scratch twin and distilled run train, their curves show perplexity, and Compare lists perplexity
    and the generations of teacher, scratch and distilled students side by side."""
    pytest.importorskip("transformers")
    from text_fixtures import lm_teacher

    lm_teacher(runs_dir, tmp_path)
    corpus = RunStore(runs_dir).get("tl").config["data_dir"]
    at = page_app("train").run()
    at.radio(key="tr_task").set_value("lm").run()
    corpora = at.selectbox(key="tr_lm_dataset").options
    assert any("a folder of .txt files" in o for o in corpora) and not any("digits" in o for o in corpora)
    at.selectbox(key="tr_lm_dataset").select("text-file").run()
    at.text_input(key="tr_lm_dataset_path").input(str(tmp_path / "nothing.txt")).run()
    assert any("does not exist" in e.value for e in at.error)
    at.text_input(key="tr_lm_dataset_path").input(corpus).run()
    _no_errors(at)
    assert at.selectbox(key="tr_lm_teacher").value.startswith("tl (language model, test ppl")
    methods = at.selectbox(key="tr_lm_method").options
    assert any(o.startswith("reverse_kl") for o in methods) and any(o.startswith("jsd") for o in methods)
    assert not any(o.startswith("fitnets") for o in methods)
    at.number_input(key="tr_lm_depth").set_value(1).run()
    at.number_input(key="tr_lm_width").set_value(17).run()
    assert any("heads of an even size" in e.value for e in at.error)  # one sentence, Launch off
    assert at.button(key="tr_launch").disabled
    at.number_input(key="tr_lm_width").set_value(16).run()
    at.number_input(key="tr_lm_heads").set_value(2).run()
    at.number_input(key="tr_lm_seq_len").set_value(16).run()
    at.number_input(key="tr_lm_train_tokens").set_value(1000).run()
    at.number_input(key="tr_lm_epochs").set_value(1).run()  # 58 blocks: 7 optimiser steps
    assert any(w.value.startswith("This run takes 7 optimiser steps (7 per epoch × 1 epoch)") for w in at.warning)
    at.number_input(key="tr_lm_train_tokens").set_value(2000).run()
    at.number_input(key="tr_lm_epochs").set_value(8).run()  # enough to learn: within 10 × the teacher's perplexity
    _no_errors(at)
    assert any("117 training blocks of 17 tokens, 14 optimiser steps per epoch, 112 in all" in c.value
               for c in at.caption) and not any("optimiser steps" in w.value for w in at.warning)
    assert any("parameters, for the teacher's" in c.value for c in at.caption)
    assert any("2,000 training tokens in blocks of 16" in c.value for c in at.caption)
    assert any("s for the training tokens, at the" in c.value and "read its test blocks at" in c.value
               for c in at.caption)  # how long the cache will take, before it starts
    at.button(key="tr_launch").click().run()
    _no_errors(at)
    runs = [r for r in RunStore(runs_dir).list() if r.config["kind"] != "teacher"]
    assert sorted(r.config["kind"] for r in runs) == ["kd", "scratch"]
    _wait_done(runs)
    assert all(r.summary["task"] == "language-modelling" for r in runs)
    at.run()
    _no_errors(at)
    assert "validation perplexity" in at.get("plotly_chart")[0].proto.spec

    cmp = page_app("compare").run()
    cmp.selectbox(key="cmp_dataset").select("text-file").run()
    _no_errors(cmp)
    columns = cmp.dataframe[0].value.columns
    assert "test ppl" in columns and "ppl vs scratch" in columns and "test acc %" not in columns
    assert any("test perplexity of" in m.value and "scratch twin's" in m.value for m in cmp.markdown), \
        [m.value for m in cmp.markdown]
    assert cmp.radio(key="cmp_gen_mode").value == "greedy"
    titles = [c.value for c in cmp.caption]
    assert any(t.startswith("teacher") and "tl" in t for t in titles)  # the teacher's own run's generations
    assert any("scratch" in t for t in titles) and any("distilled" in t for t in titles)
    cmp.radio(key="cmp_gen_mode").set_value("sampled").run()
    _no_errors(cmp)
    assert any(t.value.strip() for t in cmp.text)


def test_the_sweep_page_runs_a_grid_of_a_language_model_and_offers_its_search(runs_dir, tmp_path):
    """Sweep → a language model: a T × α grid of a llama student of the tiny teacher run, its scratch twin, and the
    results in perplexity; the search form offers the token-level methods and their β."""
    pytest.importorskip("transformers")
    from text_fixtures import lm_teacher

    lm_teacher(runs_dir, tmp_path)
    corpus = RunStore(runs_dir).get("tl").config["data_dir"]
    at = page_app("sweep").run()
    at.radio(key="swg_task").set_value("lm").run()
    at.selectbox(key="swg_lm_dataset").select("text-file").run()
    at.text_input(key="swg_lm_dataset_path").input(corpus).run()
    _no_errors(at)
    assert at.selectbox(key="swg_lm_teacher").value.startswith("tl (language model")
    at.number_input(key="swg_lm_depth").set_value(1).run()
    at.number_input(key="swg_lm_width").set_value(16).run()
    at.number_input(key="swg_lm_heads").set_value(2).run()
    at.number_input(key="swg_lm_epochs").set_value(1).run()
    at.multiselect(key="swg_T_lm").set_value([1.0]).run()
    at.multiselect(key="swg_alpha_lm").set_value([0.5]).run()
    at.slider(key="swg_seeds").set_value(1).run()
    assert any("2 runs" in c.value for c in at.caption)
    at.button(key="swg_launch").click().run()
    _no_errors(at)
    runs = [r for r in RunStore(runs_dir).list() if r.config["kind"] != "teacher"]
    assert sorted(r.config["kind"] for r in runs) == ["kd", "scratch"]
    assert all(r.config["task"] == "language-modelling" for r in runs)
    _wait_done(runs)
    at.run()
    _no_errors(at)
    specs = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    assert "Test perplexity" in specs and "scratch twin" in specs
    assert any("test perplexity" in m.label.lower() for m in at.metric)

    at.radio(key="sw_kind").set_value("search").run()
    at.radio(key="swr_task").set_value("lm").run()
    at.selectbox(key="swr_lm_dataset").select("text-file").run()
    at.text_input(key="swr_lm_dataset_path").input(corpus).run()
    _no_errors(at)
    methods = at.selectbox(key="swr_lm_method").options
    assert any(o.startswith("jsd") for o in methods) and not any(o.startswith("dkd") for o in methods)
    at.selectbox(key="swr_lm_method").select("jsd").run()
    assert "beta" in at.multiselect(key="swr_params_jsd").options
    assert any("validation perplexity" in c.value for c in at.caption)


def test_the_train_page_reads_a_saved_hugging_face_data_set(runs_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    from text_fixtures import text_csv

    rows = [r.rsplit(",", 1) for r in text_csv(tmp_path / "t.csv", n_per_class=20).read_text().splitlines()[1:]]
    datasets.Dataset.from_dict({"sentence": [t for t, _ in rows], "topic": [c for _, c in rows]}).save_to_disk(
        str(tmp_path / "saved"))
    at = page_app("train").run()
    at.selectbox(key="tr_dataset").select("hf-dataset").run()
    at.text_input(key="tr_dataset_path").input(str(tmp_path)).run()
    assert any("not written by save_to_disk" in e.value for e in at.error) or \
        any("not written by save_to_disk" in str(w.value) for w in at.warning)
    at.text_input(key="tr_dataset_path").input(str(tmp_path / "saved")).run()
    assert any("no column 'label'" in str(m.value) for m in [*at.error, *at.warning])
    at.text_input(key="tr_dataset_label_column").input("topic").run()
    _no_errors(at)
    assert any("60 texts in 3 classes" in c.value for c in at.caption)


def test_dark_knowledge_shows_a_text_teachers_softened_probabilities_for_a_sentence(runs_dir):
    from text_fixtures import wordnet_teacher

    wordnet_teacher(runs_dir)
    at = page_app("dark_knowledge").run()
    at.radio(key="dk_mode").set_value("text").run()
    _no_errors(at)
    assert at.selectbox(key="dk_text_dataset").value == "wordnet"
    assert at.selectbox(key="dk_text_teacher").value.startswith("wn-bert")
    assert any("True class" in m.value and "(right)" in m.value for m in at.markdown)
    assert _charts(at) >= 3  # bars, ranking, T² chart
    h1 = float(at.metric[1].value.split()[0])
    at.slider(key="dk_T").set_value(10.0).run()
    _no_errors(at)
    assert float(at.metric[1].value.split()[0]) > h1  # a higher T flattens: more entropy
    assert at.query_params["mode"] == "text" and at.query_params["sentence"]
    at.text_input(key="dk_text").input("a tall tree with needles that grows in cold forests").run()
    _no_errors(at)
    assert any("The teacher reads it as" in m.value for m in at.markdown)
    assert any("tree with needles" in m.value for m in at.markdown)
    at.button(key="dk_text_random").click().run()
    _no_errors(at)
    assert at.text_input(key="dk_text").value == ""


def test_a_cancel_shows_at_once_on_the_train_panel(store):
    """Issue 22, item 4: after Cancel the panel says so at once, not 'epoch 2/3' until the job notices."""
    from workbench.models.zoo import ModelConfig
    from workbench.store.runs import process_identity
    from workbench.train.loop import TrainConfig

    cfg = TrainConfig(kind="kd", dataset="digits", model=ModelConfig("mlp", depth=1, width=8), epochs=3,
                      teacher="digits-cnn", profile=False, group="train-cancel")
    run = store.create(cfg.record(), prefix="kd")
    run.set_status("running", **process_identity(), progress={"epoch": 2, "epochs": 3, "total_steps": 30,
                                                              "fraction": 0.6})
    at = page_app("train")
    at.session_state["tr_group"] = "train-cancel"
    at.run()
    assert any("epoch 2/3" in p.proto.text for p in at.get("progress"))
    run.request_cancel()
    at.run()
    texts = [p.proto.text for p in at.get("progress")]
    assert any("cancelling: the job stops at its next step" in t for t in texts), texts
    run.set_status("cancelled", error="cancelled by the user")


@pytest.mark.parametrize("module,address", [
    ("sweep", {"sw_kind": "grid", "swg_seeds": "99"}),  # the trial's link: StreamlitValueAboveMaxError, for good
    ("dark_knowledge", {"dk_T": "1000"}),
])
def test_a_link_with_a_value_its_field_refuses_opens_the_page_with_its_defaults(module, address):
    """Values from the address that a widget refuses (above its maximum, below its minimum) are forgotten and taken
    out of the address; the page says so in one sentence and draws itself, and stays drawn on the next run."""
    at = AppTest.from_string(f"from workbench.app import common, {module}\ncommon.page_chrome()\n"
                             f"common.guarded({module}.page)", default_timeout=TIMEOUT)
    for k, v in address.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not [e.value for e in at.error if "could not be shown" in e.value]
    (note,) = [w.value for w in at.warning if "the page opened with its own defaults" in w.value]
    bad = [k for k in address if k != "sw_kind"]
    assert all(k in note for k in bad) and all(at.query_params.get(k) != address[k] for k in bad)
    at.run()  # the break does not persist
    assert not at.exception and not [e.value for e in at.error if "could not be shown" in e.value]


def test_a_reload_shows_this_tabs_own_group_not_a_newer_cancelled_one(store):
    """Tab A launched a group that still waits to run; tab B launched a newer one and cancelled it. A reload of tab A
    (a new session) shows its own group: the one in its address, and without an address the newest group that
    still has a queued or running job (before: the newest group, tab B's cancelled one)."""
    from workbench.models.zoo import ModelConfig
    from workbench.train.loop import TrainConfig

    cfg = TrainConfig(kind="scratch", dataset="digits", model=ModelConfig("mlp", depth=1, width=8), epochs=1,
                      profile=False)
    store.create(replace(cfg, group="train-20261206-000001-aaaa").record(), prefix="scratch")  # tab A's, queued
    b = store.create(replace(cfg, group="train-20261206-000002-bbbb").record(), prefix="scratch")
    b.set_status("cancelled", error="cancelled by the user")
    at = page_app("train").run()
    assert not at.exception
    assert any(h.value == "Jobs · train-20261206-000001-aaaa" for h in at.subheader)
    linked = page_app("train")
    linked.query_params["group"] = "train-20261206-000002-bbbb"  # a tab whose address names its group
    linked.run()
    assert any(h.value == "Jobs · train-20261206-000002-bbbb" for h in linked.subheader)


def test_presentation_mode_survives_a_reload_through_the_address():
    """Before, a reload (a new session) switched presentation mode off."""
    at = AppTest.from_file("../../app.py", default_timeout=TIMEOUT).run()
    at.toggle(key="presenting").set_value(True).run()
    assert at.query_params.get("present") == "1"
    again = AppTest.from_file("../../app.py", default_timeout=TIMEOUT)
    again.query_params["present"] = "1"  # what the reloaded tab's address holds
    again.run()
    assert not again.exception and again.toggle(key="presenting").value is True
    again.toggle(key="presenting").set_value(False).run()
    assert "present" not in again.query_params
