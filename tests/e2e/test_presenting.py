"""In front of a class and a boardroom: each fix of the projector-and-stakeholder review, as a test that failed
before it (the layout at 1024 × 768 and 1400 × 900 is checked in a real browser by tests/e2e/test_browser.py)."""


import pytest

pytest.importorskip("streamlit")
from conftest import kdw  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from workbench.analysis import plots  # noqa: E402
from workbench.analysis.compare import comparison_rows, format_table, headline, table_columns  # noqa: E402
from workbench.store.runs import RunStore  # noqa: E402

TIMEOUT = 120


def page_app(module: str) -> AppTest:
    return AppTest.from_string(f"from workbench.app.{module} import page\npage()", default_timeout=TIMEOUT)


@pytest.fixture(scope="module")
def one_seed_sweep(tmp_path_factory):
    runs = tmp_path_factory.mktemp("sweep") / "runs"
    kdw("sweep", "--engine", "local", "--dataset", "digits", "--model", "mlp", "--depth", "1", "--width", "16", "--epochs", "2",
        "--temperatures", "2", "4", "--alphas", "0.9", "--seeds", "1", "--runs-dir", str(runs))
    return runs


# 1. a one-seed sweep
def test_a_one_seed_sweep_shows_its_results_without_a_traceback(one_seed_sweep, monkeypatch):
    monkeypatch.setenv("KDW_RUNS_DIR", str(one_seed_sweep))
    at = page_app("sweep").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.metric[0].help == "one seed: its spread is unknown"
    # 15. the results panel says what they came from
    assert any("digits · mlp(d=1, w=16) · 2 epochs · all labels · seed 0" in c.value for c in at.caption)


# 2. page addresses: the root routes to Dark knowledge, whose state travels in the address
def test_dark_knowledge_reads_and_writes_its_state_in_the_address():
    at = AppTest.from_file("../../app.py", default_timeout=TIMEOUT)
    at.query_params.update({"dataset": "digits", "image": "17", "T": "6"})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Dark knowledge"
    assert at.number_input(key="dk_index").value == 17 and at.slider(key="dk_T").value == 6.0
    at.slider(key="dk_T").set_value(8.0).run()
    assert at.query_params["T"] in ("8", ["8"]) and at.query_params["image"] in ("17", ["17"])


# 4. the form survives a reload; an invalid field turns Launch off and says why
def test_the_train_form_is_restored_from_the_address_and_refuses_an_invalid_field():
    at = page_app("train")
    at.query_params.update({"tr_dataset": "digits", "tr_epochs": "7", "tr_lr": "0.01"})
    at.run()
    assert at.selectbox(key="tr_dataset").value == "digits" and at.number_input(key="tr_epochs").value == 7
    assert at.text_input(key="tr_lr").value == "0.01"
    at.text_input(key="tr_lr").set_value("fast").run()
    assert at.button(key="tr_launch").disabled
    assert any("Launch is off: the learning rate must be a number" in e.value for e in at.error)
    at.text_input(key="tr_lr").set_value("0.003").run()
    assert not at.button(key="tr_launch").disabled
    assert any(c.value.startswith("**Will run:**") and "lr 0.003" in c.value for c in at.caption)
    assert at.query_params["tr_lr"] == "0.003"  # text, as typed: before, tr_lr=%220.003%22 (in JSON quotes)


# 13. a new data set brings its own defaults
def test_switching_the_data_set_resets_epochs_and_labels():
    at = page_app("train").run()
    if "fashion-mnist" not in at.selectbox(key="tr_dataset").options:
        pytest.skip("needs Fashion-MNIST")
    at.selectbox(key="tr_dataset").select("fashion-mnist").run()
    assert at.number_input(key="tr_epochs").value == 10 and at.number_input(key="tr_labels").value == 1000
    at.selectbox(key="tr_dataset").select("digits").run()
    assert at.number_input(key="tr_epochs").value == 20 and at.number_input(key="tr_labels").value == 0
    will_run = next(c.value for c in at.caption if c.value.startswith("**Will run:**"))
    assert "px" not in will_run and "20 epochs" in will_run  # digits at its own 8×8, not Fashion-MNIST's 28×28


# 5. one measurement per model, whatever the order of the runs
def _summary_with_teacher(latency, busy, acc=0.9):
    return {"test": {"accuracy": acc, "confusion_matrix": [[1]]}, "model_label": "mlp", "dataset": "digits",
            "profile": {"latency_ms": 0.02, "throughput": 1e6, "cpu_busy_elsewhere": 0.0, "size_mb": 0.1},
            "teacher": {"digest": "t1", "label": "cnn", "spec": "digits-cnn", "test": {"accuracy": 0.99},
                        "profile": {"latency_ms": latency, "throughput": 1e4, "cpu_busy_elsewhere": busy,
                                    "size_mb": 1.0}}}


def test_the_teacher_is_timed_once_per_comparison_whatever_the_order(store):
    a, b = store.create({"kind": "kd", "dataset": "digits", "seed": 0}), store.create({"kind": "kd", "dataset":
                                                                                       "digits", "seed": 1})
    a.write_summary(_summary_with_teacher(12.868, 0.6))
    b.write_summary(_summary_with_teacher(0.332, 0.02))
    for r in (a, b):
        r.set_status("done")
    for order in ([a, b], [b, a]):
        teacher = next(r for r in comparison_rows(order) if r["role"] == "teacher")
        assert teacher["latency_ms"] == 0.332 and not teacher["timing_unreliable"]


def test_identical_students_share_one_timing_and_a_busy_one_is_flagged(store):
    rows = [{"role": "kd", "model": "mlp", "dataset": "digits", "latency_ms": 0.5, "throughput": 20921,
             "cpu_busy": 0.7, "run_id": "a"},
            {"role": "kd", "model": "mlp", "dataset": "digits", "latency_ms": 0.02, "throughput": 1555186,
             "cpu_busy": 0.01, "run_id": "b"}]
    from workbench.analysis.compare import unify_timings

    unify_timings(rows)
    assert rows[0]["throughput"] == rows[1]["throughput"] == 1555186 and rows[0]["timing_from"] == "b"
    busy = unify_timings([dict(rows[0], cpu_busy=0.7, run_id="c", model="other", test_acc=0.5)])[0]
    assert busy["timing_unreliable"] and "*" in format_table([busy])


# 6. one colour and one name per role
def test_roles_have_one_colour_and_one_name_everywhere():
    assert plots.ROLE_NAMES["kd"] == "distilled" and set(plots.ROLE_COLORS) == set(plots.ROLE_NAMES)
    fig = plots.training_curves({"distilled mlp": [{"epoch": 1, "train_loss": 1, "val_acc": 0.5}]},
                                {"distilled mlp": plots.KD})
    assert fig.data[0].line.color == plots.KD
    names = [t.name for t in plots.pareto([{"role": "kd", "test_acc": 0.5, "size_mb": 1, "params": 1,
                                            "model": "m", "run_id": "r"}], "size_mb").data]
    assert "distilled" in names and "kd" not in names


# 7. axes that do not mislead
def test_axes_have_a_sensible_span_whole_epochs_and_clean_ticks():
    rows = [{"epoch": e, "train_loss": 1.0, "val_acc": v} for e, v in ((1, 0.7948), (2, 0.7960), (3, 0.7955))]
    fig = plots.training_curves({"run": rows})
    lo, hi = fig.layout.yaxis2.range
    assert hi - lo >= 5 and fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tick0 == 1
    tsq = plots.temperature_scaling([1, 2, 4, 8, 16, 20], [1] * 6, [1] * 6, [1] * 6, [1] * 6)
    assert list(tsq.layout.xaxis.tickvals) == [1, 2, 4, 8, 20]  # 16 and 20 overlapped at 1024 px and tsq.layout.yaxis.dtick == 1
    gain = plots.sweep_heatmap([{"temperature": 2, "alpha": 0.9, "kd_gain": 0.03, "seeds": 1}], "kd_gain")
    assert gain.data[0].zmid == 0 and gain.data[0].colorscale[0][1] != gain.data[0].colorscale[-1][1]
    par = plots.parallel_coordinates([{"temperature": 2, "alpha": 0.9, "seed": 0, "test_acc": 0.810585,
                                       "agreement": 0.9, "ece": 0.0312345}])
    dims = {d.label: d for d in par.data[0].dimensions}
    assert dims["test acc (%)"].values[0] == 81.0585 and dims["test acc (%)"].tickformat == ".3~g"


# 8. a table that fits, and a headline
def test_default_columns_ratios_to_the_teacher_and_a_headline():
    rows = [{"role": "teacher", "model": "cnn", "test_acc": 0.9297, "size_mb": 0.38, "latency_ms": 0.5},
            {"role": "kd", "model": "mlp", "test_acc": 0.8711, "size_mb": 0.034, "latency_ms": 0.217, "kd_gain": 0.0814,
             "method": "kd", "temperature": 4.0, "alpha": 0.9}]
    from workbench.analysis.compare import add_teacher_ratios

    add_teacher_ratios(rows)
    names = [n for n, _ in table_columns(False, rows=rows)]
    assert names == ["role", "model", "test acc %", "KD gain", "params", "size MB", "latency ms", "vs teacher"]
    assert dict(table_columns(False, rows=rows))["vs teacher"](rows[1]) == "11× smaller, 2.3× faster, −5.9 pts"
    assert "ECE" in [n for n, _ in table_columns(False, wide=True, rows=rows)]
    assert headline(rows).startswith("The best distilled student, mlp, is 11× smaller and 2.3× faster than the "
                                     "teacher cnn, and 5.86 points less accurate (87.11% against 92.97%)")


def test_a_model_from_a_long_folder_gets_a_short_name_in_the_table_and_the_headline():
    """Issue 22, item 6: an `hf:` teacher from a long folder pushed Compare's "vs teacher" column off a 1024 px
    screen in presentation mode; the cell and the sentence name the folder's last part (the config keeps it all)."""
    from workbench.analysis.compare import add_teacher_ratios

    rows = [{"role": "teacher", "model": "hf:/tmp/kdw-wordnet-teacher-7gx_fphs/bert", "test_acc": 0.786,
             "size_mb": 17.0, "latency_ms": 3.0},
            {"role": "kd", "model": "bag(d=1, w=32)", "test_acc": 0.70, "size_mb": 0.5, "latency_ms": 0.1,
             "kd_gain": 0.02, "method": "kd", "temperature": 4.0, "alpha": 0.9}]
    add_teacher_ratios(rows)
    assert dict(table_columns(False, rows=rows))["model"](rows[0]) == "hf:…/bert"
    assert "than the teacher hf:…/bert" in headline(rows) and "/tmp/" not in headline(rows)


def test_a_student_larger_and_slower_than_its_teacher_is_said_so_and_busy_timings_are_never_quoted():
    """A torchvision mobilenet_v2 student (2.2M parameters) beside the 288k-parameter digits teacher."""
    from workbench.analysis.compare import add_teacher_ratios, vs_teacher

    rows = [{"role": "teacher", "model": "cnn(d=2, w=32)", "test_acc": 0.9889, "size_mb": 1.16, "latency_ms": 0.4},
            {"role": "kd", "model": "torchvision:mobilenet_v2", "test_acc": 0.95, "size_mb": 9.0, "latency_ms": 1.36,
             "kd_gain": 0.01, "method": "kd", "temperature": 4.0, "alpha": 0.9}]
    add_teacher_ratios(rows)
    assert vs_teacher(rows[1]) == "7.8× larger, 3.4× slower, −3.9 pts"
    assert headline(rows).startswith("The best distilled student, torchvision:mobilenet_v2, is 7.8× larger and "
                                     "3.4× slower than the teacher cnn(d=2, w=32)")
    fast = [dict(rows[0], latency_ms=2093.0), dict(rows[1], latency_ms=1.0)]
    add_teacher_ratios(fast)
    assert "2,093× faster" in headline(fast) and vs_teacher(fast[1]).startswith("7.8× larger, 2,093× faster")
    busy = [dict(rows[0], cpu_busy=0.8), dict(rows[1])]
    add_teacher_ratios(busy)
    line = headline(busy)
    assert "slower" not in line and "faster" not in line and "busy CPU (re-measure)" in line
    assert vs_teacher(busy[1]).endswith("3.4× slower*, −3.9 pts")  # the table greys it and marks it


# 9. the Pareto caption describes what is drawn; points are named
def test_pareto_caption_matches_the_plot_and_points_are_labelled():
    one = plots.pareto([{"role": "kd", "test_acc": 0.5, "latency_ms": 1, "params": 1, "model": "m", "run_id": "r"}])
    assert "no frontier to draw" in plots.caption(one) and "dashed" not in plots.caption(one)
    two = plots.pareto([{"role": "kd", "test_acc": 0.5, "latency_ms": 1, "params": 1, "model": "m", "run_id": "r"},
                        {"role": "teacher", "test_acc": 0.9, "latency_ms": 2, "params": 9, "model": "t",
                         "run_id": "t"}])
    assert "dashed line" in plots.caption(two) and {a.text for a in two.layout.annotations} == {"distilled", "teacher"}


# 10. presentation mode
def test_presentation_mode_keeps_only_what_a_class_needs():
    at = page_app("train").run()
    assert at.text_input(key="tr_lr") is not None
    at.session_state["presenting"] = True
    at.run()
    assert not at.exception
    assert not [w for w in at.text_input if w.key == "tr_lr"] and not [w for w in at.selectbox if w.key == "tr_device"]


# 11. the wait before the first epoch is explained
def test_the_teacher_logit_stage_is_reported_with_progress(store, digits):
    from workbench.jobs.queue import execute_run
    from workbench.models.zoo import ModelConfig
    from workbench.train import teachers as tm
    from workbench.train.loop import TrainConfig

    tm._MEMORY.clear()
    run = store.create(TrainConfig(kind="kd", dataset="digits", teacher="digits-cnn", epochs=1, profile=False,
                                   model=ModelConfig("mlp", depth=1, width=8)).record())
    stages = []
    execute_run(run, store, [lambda e: stages.append(e) if e["event"] == "stage" else None])
    assert stages and stages[-1]["fraction"] == pytest.approx(1.0)
    assert "teacher's logits (first run only" in stages[0]["text"]


# 14. the sidebar's job count refreshes by itself
def test_the_sidebar_job_count_is_a_refreshing_fragment():
    import inspect

    from workbench.app import sidebar

    assert "st.fragment(_jobs, run_every=" in inspect.getsource(sidebar.sidebar)


# 15. switching the data set on Compare keeps each data set's choice
def test_compare_keeps_the_chosen_runs_of_each_data_set(one_seed_sweep, monkeypatch):
    monkeypatch.setenv("KDW_RUNS_DIR", str(one_seed_sweep))
    at = page_app("compare").run()
    key = "cmp_runs_digits"
    chosen = at.multiselect(key=key).value
    at.multiselect(key=key).set_value(chosen[:2]).run()
    assert at.multiselect(key=key).value == chosen[:2] and not at.exception
    assert any(m.value.startswith("**The best distilled student") for m in at.markdown)
    assert any("digits · " in c.value for c in at.caption)


# 18. the demo explains a missing gain only when there is none
def test_the_demo_explains_no_gain_only_when_there_is_none(runs_dir):
    out = kdw("demo", "--fast", "--runs-dir", str(runs_dir)).stdout
    gain = float(out.split("KD gain over scratch: ")[1].split()[0])
    assert ("No gain here" in out) == (gain <= 0)


# 20. the notebooks stay output-free (tests/e2e/test_notebooks.py) and their checkpoints are ignored
def test_notebook_checkpoints_are_ignored():
    from conftest import ROOT

    assert ".ipynb_checkpoints/" in (ROOT / ".gitignore").read_text().split()


def test_the_report_opens_with_the_headline_and_plain_words_for_agreement_and_ece(one_seed_sweep):
    from workbench.analysis.report import build_report

    store = RunStore(one_seed_sweep)
    page = build_report(store.list())
    assert '<p class="headline">The best distilled student' in page
    assert "how often the student picks the same class as the teacher" in page and "perfectly calibrated" in page


def test_presentation_mode_charts_have_larger_ticks_and_titles_that_wrap():
    """Issue 22, item 6: in presentation mode the tick labels grow with the text, and a long title is broken
    between words instead of being cut at the plot's edge."""
    at = AppTest.from_string(
        "import streamlit as st\nfrom workbench.app import common\nfrom workbench.analysis import plots\n"
        "st.session_state['presenting'] = True\n"
        "fig = plots.dark_knowledge_ranking([str(i) for i in range(10)], [0.1] * 10, 7, 6.0)\n"
        "common.chart(fig, 'k')\n"
        "st.session_state['fig'] = fig.to_dict()\n", default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    layout = at.session_state["fig"]["layout"]
    assert layout["xaxis"]["tickfont"]["size"] == 15 and layout["font"]["size"] == 17
    lines = layout["title"]["text"].split("<br>")  # 28 characters: the narrowest chart beside an open sidebar
    assert len(lines) == 3 and all(len(line) <= 28 for line in lines), lines
    # its own top margin, for all three lines (Plotly's automargin counts one): they stay above the plot area
    assert layout["margin"]["t"] >= 3 * 19 * 1.3 and layout["title"]["yref"] == "container"


def test_small_things_of_issue_22(tmp_path):
    """Item 8: a link without a data set keeps its image; '1 epoch'; lr 1e9 names the limit; a file given as an
    image folder is called a file."""
    from workbench.analysis.describe import describe_runs
    from workbench.data.images import list_folder
    from workbench.errors import DataError

    at = AppTest.from_file("../../app.py", default_timeout=TIMEOUT)
    at.query_params.update({"image": "5", "T": "12"})
    at.run()
    assert not at.exception and at.number_input(key="dk_index").value == 5 and at.slider(key="dk_T").value == 12.0

    class R:
        config = {"dataset": "digits", "model_label": "mlp", "epochs": 1, "labels": None, "seed": 0}
    assert "· 1 epoch ·" in describe_runs([R()])
    from workbench.experiments.recipes import describe_config
    from workbench.train.loop import TrainConfig

    assert ", 1 epoch, " in describe_config(TrainConfig(kind="scratch", dataset="digits", epochs=1))
    f = tmp_path / "passwd"
    f.write_text("root:x:0:0")
    with pytest.raises(DataError, match="is a file, not a folder"):
        list_folder(f)
    train = page_app("train")
    train.run()
    train.text_input(key="tr_lr").set_value("1e9").run()
    assert any("above 0 and at most 10" in e.value for e in train.error)


def test_a_one_seed_sweep_has_no_seed_axis():
    rows = [{"temperature": t, "alpha": 0.9, "seed": 0, "test_acc": 0.8 + t / 100} for t in (1, 2, 4)]
    labels = [d["label"] for d in plots.parallel_coordinates(rows).data[0].dimensions]
    assert "seed" not in labels and "α" not in labels and "T" in labels


def test_the_app_says_a_channel_mismatch_in_its_own_words():
    """Item 8: a colour model on grey images names the app's Channels field, not PyTorch's weight shapes or a flag."""
    from workbench.app.common import in_app_words

    train = page_app("train")
    train.run()
    train.selectbox(key="tr_dataset").set_value("digits").run()
    train.radio(key="tr_student_source").set_value("torchvision").run()
    train.number_input(key="tr_image_size_digits").set_value(32).run()
    assert not train.exception
    (msg,) = [e.value for e in train.error if "channel" in e.value]
    assert "torchvision:resnet18 takes 3-channel images and these have 1; set **Channels** to 3" in msg, msg
    assert "--" not in msg and "weight" not in msg and "size" not in msg.split("Channels")[0]
    assert in_app_words("too small: pass a larger --image-size (at least 32 works); `kdw teacher --epochs 3`") == \
        "too small: set a larger **Image size (px)** (at least 32 works); `kdw teacher --epochs 3`"
    assert in_app_words("use --seq-len 64 or less") == "set **Tokens per block** to 64 or less"
    assert in_app_words("use --device cpu or auto") == "set **Device** to cpu or auto"


def test_compare_writes_its_runs_into_the_address_and_opens_them_from_it(one_seed_sweep, monkeypatch):
    """Item 8: the chosen runs (and the two toggles) are in the address, so a link or a reload finds them again;
    with "More columns" the extra columns are a second table, so that neither scrolls sideways."""
    monkeypatch.setenv("KDW_RUNS_DIR", str(one_seed_sweep))
    at = page_app("compare").run()
    key = "cmp_runs_digits"
    chosen = at.multiselect(key=key).value
    at.multiselect(key=key).set_value(chosen[1:3]).run()
    at.toggle(key="cmp_wide").set_value(True).run()
    ids = [label.rsplit(" · ", 1)[1] for label in chosen[1:3]]
    assert at.query_params["runs"] == ",".join(ids) and at.query_params["wide"] == "1"
    assert len(at.dataframe) == 2 and not at.exception
    assert "FLOPs" in at.dataframe[1].value.columns and "FLOPs" not in at.dataframe[0].value.columns
    fresh = page_app("compare")  # a reload, or the link in another browser
    fresh.query_params.update({"runs": ",".join(ids), "wide": "1"})
    fresh.run()
    assert fresh.multiselect(key=key).value == chosen[1:3] and fresh.toggle(key="cmp_wide").value
    assert not fresh.exception
