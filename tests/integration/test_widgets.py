"""Jupyter widgets, built without a browser: construct, set values, train a tiny digits run."""

import pytest

pytest.importorskip("ipywidgets")

from workbench.notebook.widgets import DistillPanel, TemperatureExplorer, compare, sweep_heatmap  # noqa: E402
from workbench.store.runs import RunStore  # noqa: E402


def test_temperature_explorer_redraws_when_t_moves():
    w = TemperatureExplorer(dataset="digits")
    assert w.teacher.value == "digits-cnn"
    assert w.index.value == 1  # the first test image the teacher gets right (image 0 fools it)
    before = list(w.bars.data[1].y)
    w.temperature.value = 12.0
    after = list(w.bars.data[1].y)
    assert max(after) < max(before)  # a higher T flattens the distribution
    assert "T = 12" in w.info.value
    w.index.value = 7
    assert "Test image #7" in w.image.layout.title.text


def test_temperature_explorer_loads_its_teacher_once_and_redraws_once_per_change(monkeypatch):
    import workbench.notebook.widgets as widgets

    loads, draws = [], []
    real_load, real_refresh = widgets.load_teacher, TemperatureExplorer.refresh
    monkeypatch.setattr(widgets, "load_teacher", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    monkeypatch.setattr(TemperatureExplorer, "refresh", lambda self: draws.append(1) or real_refresh(self))
    w = TemperatureExplorer(dataset="digits")
    assert len(draws) == 1  # picking the teacher and the first right image does not redraw on the way
    for T in (2.0, 3.0, 5.0):
        w.temperature.value = T
    assert loads == ["digits-cnn"] and len(draws) == 4


def test_distill_panel_shows_live_size_and_objective():
    p = DistillPanel(dataset="digits")
    first = p.size.value
    p.width.value = 128
    assert p.size.value != first and "mlp(d=1, w=128)" in p.size.value
    p.alpha.value = 0.3
    assert "0.3" in p.objective.value
    assert p.temperature.continuous_update is False and p.alpha.continuous_update is False
    p.family.value = "resnet"
    assert "resnet(d=" in p.size.value
    p.method.value = "fitnet"
    assert p.temperature.disabled and "Romero" in p.method_info.value and "100" in p.objective.value
    p.method_params.value = "beta=20"
    assert "20" in p.objective.value
    cfg = p.configs()[-1]
    assert cfg.method == "fitnet" and cfg.method_params["beta"] == 20 and cfg.method_params["ce_weight"] == 1.0
    p.method_params.value = "gamma=1"
    assert "no hyperparameters" in p.objective.value


def test_widgets_escape_every_user_string():
    """A path or a spec with HTML in it reaches the widgets as text, never as markup."""
    p = DistillPanel(dataset="digits")
    assert "image-folder" in p.dataset.options
    p.dataset.value = "image-folder"
    p.data_dir.value = "/tmp/<img src=x onerror=alert(1)>"
    assert "<img" not in p.size.value and "&lt;img src=x onerror=alert(1)&gt;" in p.size.value
    p.dataset.value = "digits"
    p.method_params.value = "<script>=1"
    assert "<script>" not in p.objective.value and "&lt;script&gt;" in p.objective.value


@pytest.mark.slow
def test_distill_panel_trains_through_the_job_runner_and_fills_the_figure(runs_dir):
    p = DistillPanel(dataset="digits", store=RunStore(runs_dir))
    p.width.value = 16
    p.epochs.value = 3
    assert len(p.curves.data) == 0
    ids = p.train()
    assert len(ids) == 2
    statuses = p.wait(300)
    assert all(s["state"] == "done" for s in statuses), statuses
    names = [t.name for t in p.curves.data]
    assert len(names) == 6, names  # objective and accuracy of both runs, and the distilled run's two terms
    assert sum(n.endswith(": ce term") for n in names) == 1 and sum(n.endswith(": kd term") for n in names) == 1
    assert p.progress.value == 1.0 and not p.train_button.disabled
    assert p.table.outputs  # the comparison table was displayed
    box = compare(ids, RunStore(runs_dir))
    assert len(box.children) >= 4


@pytest.mark.slow
def test_sweep_heatmap_widget_from_a_cli_sweep(runs_dir):
    from conftest import kdw

    kdw("sweep", "--engine", "local", "--dataset", "digits", "--model", "mlp", "--depth", "1", "--width", "16", "--epochs", "2",
        "--temperatures", "2", "4", "--alphas", "0.9", "--seeds", "1", "--no-profile", "--group", "g1",
        "--runs-dir", str(runs_dir))
    box = sweep_heatmap("g1", RunStore(runs_dir))
    acc, gain = box.children
    assert list(acc.data[0].x) == ["2", "4"] and gain.layout.title.text.startswith("KD gain")


def test_sweep_heatmap_without_runs_says_what_to_do(runs_dir):
    with pytest.raises(ValueError, match="run a sweep first"):
        sweep_heatmap([], RunStore(runs_dir))
