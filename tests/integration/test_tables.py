"""Tabular classification: the second task on the Task seam (wine, breast-cancer, a user's CSV)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import kdw

from workbench.data.tables import load_table
from workbench.errors import DataError
from workbench.models.zoo import ModelConfig
from workbench.tasks import TASKS, task_for
from workbench.tasks.image import ImageClassification
from workbench.train.loop import TrainConfig, train


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def _breast_cancer_csv(path, label="outcome"):
    from sklearn.datasets import load_breast_cancer

    b = load_breast_cancer()
    return _write_csv(path, [*b.feature_names, label],
                      [[*x, b.target_names[y]] for x, y in zip(b.data, b.target)])


def test_tables_load_standardised_with_fixed_stratified_splits():
    ds = load_table("wine")
    assert ds.input_shape == (13,) and ds.num_classes == 3 and ds.classes == ("class_0", "class_1", "class_2")
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 178
    assert torch.allclose(ds.x_train.mean(0), torch.zeros(13), atol=1e-5)  # standardised on the training split
    assert torch.allclose(ds.x_train.std(0, unbiased=False), torch.ones(13), atol=1e-4)
    again = load_table("wine")
    assert torch.equal(ds.y_test, again.y_test) and ds.fingerprint == again.fingerprint
    assert set(ds.y_test.tolist()) == {0, 1, 2} and set(ds.y_val.tolist()) == {0, 1, 2}
    assert task_for("wine").name == "tabular-classification" and task_for("digits").name == "image-classification"
    assert {d for t in TASKS for d in t.datasets} >= {"wine", "breast-cancer", "table", "digits"}


def test_tables_a_users_csv_reads_its_label_column_and_class_names(tmp_path):
    ds = load_table("table", _breast_cancer_csv(tmp_path / "bc.csv"), label_column="outcome")
    assert ds.input_shape == (30,) and ds.classes == ("benign", "malignant")
    assert ds.feature_names[0] == "mean radius"


@pytest.mark.parametrize("header,rows,label,says", [
    (["a", "b", "outcome"], [[1, 2, "x"], [3, 4, "y"]] * 3, "label", "no column 'label'"),
    (["a", "b", "label"], [[1, "tall", "x"], [3, 4, "y"]] * 3, "label", "column 'b' is not numeric"),
    (["a", "b", "label"], [[1, 2, "x"], [3, 4, "x"]] * 3, "label", "single class"),
    (None, [], "label", "is empty"),
])
def test_tables_bad_csv_gets_one_sentence_and_no_run_folder(tmp_path, runs_dir, header, rows, label, says):
    path = _write_csv(tmp_path / "t.csv", header, rows)
    with pytest.raises(DataError, match=says):
        load_table("table", path, label_column=label)
    proc = kdw("teacher", "--dataset", "table", "--data-dir", str(path), "--label-column", label, "--model", "mlp",
               "--epochs", "1", "--runs-dir", str(runs_dir), check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "Traceback" not in proc.stderr
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_tables_a_conv_student_is_refused_in_one_sentence():
    with pytest.raises(Exception, match="does not take tabular samples"):
        from workbench.train.loop import check_setup

        check_setup(TrainConfig(kind="teacher", dataset="wine", model=ModelConfig("cnn"), epochs=1, profile=False))


def test_tables_a_feature_map_method_is_refused_and_an_embedding_method_is_not():
    from workbench.train.loop import check_setup

    with pytest.raises(ValueError, match="at .Attention transfer. matches spatial feature maps, and tabular models"):
        check_setup(TrainConfig(kind="kd", dataset="wine", teacher="tw-missing", method="at", epochs=1,
                                model=ModelConfig("mlp", 1, 8), profile=False))
    session = check_setup(TrainConfig(kind="kd", dataset="wine", method="dml", epochs=1, model=ModelConfig("mlp", 1, 8),
                                      profile=False))  # dml has no teacher and no feature maps: it works on tables
    assert session.method.name == "dml"


def test_tables_train_and_distil_without_any_image_code_path(store, monkeypatch):
    def no_images(*a, **k):
        raise AssertionError("an image-specific code path ran for a table")

    for name in ("load", "load_for", "student_shape", "view_for", "to_teacher", "cache_views", "probe",
                 "check_teacher", "teacher_takes", "prepare_student"):
        monkeypatch.setattr(ImageClassification, name, no_images)
    import workbench.data.datasets as datasets
    import workbench.tasks.image as image_task

    for module in (datasets, image_task):  # where images are converted between views
        monkeypatch.setattr(module, "convert", no_images)
    base = dict(dataset="wine", batch_size=16, lr=1e-2, profile=False, seed=0)
    teacher_run = store.create(TrainConfig(kind="teacher", model=ModelConfig("mlp", 1, 64), epochs=15,
                                           **base).record(), run_id="tw")
    t = train(TrainConfig.from_dict(teacher_run.config), run=teacher_run, store=store)
    teacher_run.set_status("done")
    assert t["task"] == "tabular-classification" and t["input_shape"] == [13] and t["test"]["accuracy"] > 0.85
    kd = train(TrainConfig(kind="kd", teacher="tw", model=ModelConfig("mlp", 1, 8), epochs=15, **base), store=store)
    assert kd["test"]["agreement"] > 0.7 and kd["test"]["accuracy"] > 0.7


def test_tables_the_issue_commands_train_distil_compare_report_and_export(tmp_path, runs_dir):
    r = ["--runs-dir", str(runs_dir)]
    kdw("teacher", "--dataset", "wine", "--model", "mlp", "--epochs", "20", "--run-id", "tw", *r)
    kdw("distill", "--dataset", "wine", "--teacher", "tw", "--model", "mlp", "--width", "8", "--epochs", "20",
        "--group", "wine-kd", *r)
    csv_path = _breast_cancer_csv(tmp_path / "my.csv")
    kdw("teacher", "--dataset", "table", "--data-dir", str(csv_path), "--label-column", "outcome", "--model", "mlp",
        "--epochs", "5", "--run-id", "tt", *r)
    out = kdw("distill", "--dataset", "table", "--data-dir", str(csv_path), "--label-column", "outcome",
              "--teacher", "tt", "--model", "mlp", "--width", "8", "--epochs", "5", *r).stdout
    assert "distilled" in out and "scratch" in out
    runs = json.loads(kdw("runs", "--json", *r).stdout)
    assert {x["state"] for x in runs} == {"done"} and len(runs) == 6
    kdw("export", "tw", "--format", "onnx", *r)
    metrics = json.loads((runs_dir / "tw" / "variants" / "onnx-fp32" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.85
    table = kdw("compare", "--group", "wine-kd", *r).stdout
    assert "distilled" in table and "scratch" in table
    kdw("report", "--group", "wine-kd", "-o", str(tmp_path / "r.html"), *r)
    assert "wine" in (tmp_path / "r.html").read_text()
