"""Jupyter widgets: the app's views in a notebook, on the same core and the same plots.

- `TemperatureExplorer()`: a teacher's softened probabilities for one image as T moves.
- `DistillPanel()`: set up a distillation (and its scratch twin), train it, watch the curves.
- `compare(runs)` and `sweep_heatmap(runs)`: the app's comparison and sweep figures.
- `search_panel()`: a search of any method's hyperparameters on Ray Tune (the Sweep page's Search mode).

Training runs as a job through the same runner as the app (a subprocess writing to the
run store), and a background thread polls the store to redraw. We chose that over
training inside the kernel because the notebook never freezes, Stop is a clean cancel,
the runs outlive a kernel restart, and the app and the notebook share one code path.
`DistillPanel.wait()` blocks until the jobs finish, for scripts and tests.
"""

from __future__ import annotations

import html
import threading
import time

import ipywidgets as W
import plotly.graph_objects as go
import torch

from workbench.analysis import describe, plots
from workbench.analysis.compare import build_comparison
from workbench.analysis.format import format_flops, format_values
from workbench.core.explain import first_correct_index, teacher_view
from workbench.core.methods import DISTILLATION_METHODS, METHODS, Method, first_searched, parse_params
from workbench.data.datasets import load_dataset
from workbench.errors import friendly_error
from workbench.evaluate.metrics import flops_per_sample
from workbench.experiments import recipes, search
from workbench.experiments.launch import launch, launch_search
from workbench.experiments.search import (
    cancel_search,
    default_range,
    parse_range,
    score_text,
    search_status,
    trial_rows,
    trial_table,
)
from workbench.experiments.sweep import grid_table
from workbench.jobs.queue import LocalQueueRunner, Runner
from workbench.models.zoo import FAMILIES, ZOO, ModelConfig, build_model, check_input, count_params, parse_model
from workbench.store.runs import FINISHED, Run, RunStore, new_run_id
from workbench.train.loop import TrainConfig, available_devices
from workbench.train.teachers import load_teacher

SLIDER = dict(continuous_update=False, style={"description_width": "initial"})
COLUMN = dict(width="440px", min_width="440px")  # the controls' column, wide enough for every label


def _text(value: str) -> str:
    """A string for an HTML text node: <, > and & escaped (quotes stay readable: nothing here is an attribute)."""
    return html.escape(str(value), quote=False)


def _half() -> dict:
    """Keyword arguments for one of two widgets side by side in the controls' column."""
    return dict(layout=W.Layout(width="215px"), style={"description_width": "70px"})


def _redraw(widget: go.FigureWidget, fig: go.Figure) -> None:
    """Replace a FigureWidget's content with a figure from `plots` (so both always match)."""
    with widget.batch_update():
        widget.data = ()
        widget.add_traces(list(fig.data))
        widget.layout = fig.layout


def _teacher_options(dataset: str, store: RunStore) -> list[tuple[str, str]]:
    return recipes.teacher_choices(dataset, store)


def _datasets() -> list[str]:
    return recipes.dataset_choices("image")[0]  # the widgets show images; tables train through the Python API


class TemperatureExplorer(W.VBox):
    """Pick a data set, a shipped teacher, an image and T; see the softened probabilities live."""

    def __init__(self, dataset: str | None = None, store: RunStore | None = None):
        self.store = store or RunStore()
        self.dataset = W.Dropdown(options=_datasets(), value=dataset or recipes.default_dataset(),
                                  description="data set")
        self.teacher = W.Dropdown(description="teacher")
        self.index = W.BoundedIntText(value=0, min=0, max=0, description="test image", layout=W.Layout(width="230px"))
        self.random = W.Button(description="random image", layout=W.Layout(width="140px"))
        self.temperature = W.FloatSlider(value=4.0, min=1.0, max=20.0, step=0.5, description="T",
                                         continuous_update=True, layout=W.Layout(width="400px"))
        self.info = W.HTML()
        self.image = go.FigureWidget()
        self.bars = go.FigureWidget()
        self.ranking = go.FigureWidget()
        self.dataset.observe(self._on_dataset, "value")
        self._models: dict[str, torch.nn.Module] = {}  # teacher spec -> model, loaded once (T moves redraw often)
        self._quiet = False  # set while _on_dataset changes several controls, so that it redraws once
        for w in (self.teacher, self.index, self.temperature):
            w.observe(lambda _: self._quiet or self.refresh(), "value")
        self.random.on_click(lambda _: setattr(self.index, "value", int(torch.randint(0, self.index.max + 1, (1,)))))
        controls = W.VBox([self.dataset, self.teacher, W.HBox([self.index, self.random]), self.temperature, self.info],
                          layout=W.Layout(**COLUMN))
        super().__init__([W.HBox([controls, self.image]), self.bars, self.ranking])
        self._on_dataset()

    def _on_dataset(self, _=None) -> None:
        self._ds = load_dataset(self.dataset.value)
        self.index.max = len(self._ds.x_test) - 1
        opts = _teacher_options(self.dataset.value, self.store)
        self._quiet = True
        try:
            self.teacher.options = opts
            if opts:
                self.teacher.value = opts[0][1]
                self.index.value = first_correct_index(self._teacher_model(), self._ds)
        finally:
            self._quiet = False
        self.refresh()

    def _teacher_model(self) -> torch.nn.Module:
        spec = self.teacher.value
        if spec not in self._models:
            self._models[spec] = load_teacher(spec, self.store).model
        return self._models[spec]

    def refresh(self) -> None:
        if not self.teacher.value:
            self.info.value = (f"<b>No teacher for {_text(str(self.dataset.value))}.</b> Train one with "
                               "<code>kdw teacher</code>.")
            return
        ds, T = self._ds, float(self.temperature.value)
        v = teacher_view(self._teacher_model(), ds, int(self.index.value), T)
        x, y = ds.split("test")
        _redraw(self.image, plots.image(ds.denormalise(x[int(self.index.value)]).numpy(),
                                        f"Test image #{self.index.value}", ds.classes[v.true_class]))
        _redraw(self.bars, plots.probability_bars(ds.classes, v.probs_t1.tolist(), v.probs_T.tolist(), T,
                                                  v.true_class))
        _redraw(self.ranking, plots.dark_knowledge_ranking(ds.classes, v.probs_T.tolist(), v.true_class, T))
        top = _text(", ".join(f"{c} ({100 * p:.1f}%)" for c, p in v.wrong_ranking[:3]))
        self.info.value = (f"true: <b>{_text(str(ds.classes[v.true_class]))}</b>, predicted: "
                           f"<b>{_text(str(ds.classes[v.predicted]))}</b><br>"
                           f"entropy at T = 1: {v.entropy_t1:.3f} nats; at T = {T:g}: {v.entropy_T:.3f} nats<br>"
                           f"looks most like: {top}")


class DistillPanel(W.VBox):
    """Controls for a distillation run and its scratch twin, a Train and a Stop button, live curves, the table."""

    def __init__(self, dataset: str | None = None, store: RunStore | None = None, poll_s: float = 0.5):
        self.store = store or RunStore()
        self.runner: Runner = LocalQueueRunner(self.store)
        self.poll_s = poll_s
        self.run_ids: list[str] = []
        self._thread: threading.Thread | None = None
        self.dataset = W.Dropdown(options=_datasets() + ["image-folder", "csv"],
                                  value=dataset or recipes.default_dataset(), description="data set")
        self.data_dir = W.Text(description="your data", placeholder="image folder, or CSV of path,label",
                               continuous_update=False, layout=W.Layout(width="420px"))
        self.teacher = W.Dropdown(description="teacher")
        self.family = W.Dropdown(options=list(ZOO) + ["spec"], value="mlp", description="student",
                                 tooltip="a built-in family, or spec: torchvision:NAME, timm:NAME, file.py:fn")
        self.spec = W.Text(value="torchvision:resnet18", description="spec", continuous_update=False,
                           placeholder="torchvision:NAME, timm:NAME, path/file.py:fn", layout=W.Layout(width="420px"))
        self.image_size = W.BoundedIntText(value=0, min=0, max=512, description="size px", **_half(),
                                           tooltip="the student's image size; 0 = the data set's")
        self.init = W.Text(description="init", placeholder="weights to start from (optional)",
                           continuous_update=False, **_half())
        self.depth = W.BoundedIntText(value=1, min=1, max=56, description="depth", **_half())
        self.width = W.BoundedFloatText(value=64, min=0.25, max=1024, description="width", **_half())
        self.size = W.HTML()
        self.temperature = W.FloatSlider(value=4.0, min=1.0, max=20.0, step=0.5, description="T",
                                         layout=W.Layout(width="420px"), **SLIDER)
        self.alpha = W.FloatSlider(value=0.9, min=0.0, max=1.0, step=0.05, description="α (KD weight)",
                                   layout=W.Layout(width="420px"), **SLIDER)
        self.method = W.Dropdown(options=[(f"{k} · {METHODS[k].title}", k) for k in DISTILLATION_METHODS
                                             if not METHODS[k].only_tokens],  # language models: the CLI
                                 value="kd", description="method")
        self.method_params = W.Text(value="", description="params", placeholder="e.g. beta=100, stage=stage3")
        self.method_info = W.HTML()
        self.objective = W.HTML()
        self.epochs = W.BoundedIntText(value=10, min=1, max=500, description="epochs", **_half())
        self.labels = W.BoundedIntText(value=0, min=0, max=10**7, description="labels", **_half(),
                                       tooltip="visible training labels; 0 = all (Hinton's transfer set otherwise)")
        self.device = W.Dropdown(options=available_devices(), value="auto", description="device", **_half())
        self.seed = W.BoundedIntText(value=0, min=0, max=10**6, description="seed", **_half())
        self.labels_hint = W.HTML("<small>labels 0 = all; N keeps N training labels, and the teacher labels the "
                                  "rest for the KD student (Hinton's transfer set)</small>")
        self.scratch = W.Checkbox(value=True, description="also train the scratch twin (α = 0)", indent=False)
        self.train_button = W.Button(description="Train", button_style="primary", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self.status = W.HTML()
        self.progress = W.FloatProgress(value=0.0, min=0.0, max=1.0, description="progress")
        self.curves = go.FigureWidget()
        self.table = W.Output()
        self.dataset.observe(self._on_dataset, "value")
        self.data_dir.observe(self._on_dataset, "value")
        for w in (self.family, self.depth, self.width, self.spec, self.image_size):
            w.observe(lambda _: self._on_model(), "value")
        self.method.observe(lambda _: self._on_method(), "value")
        for w in (self.temperature, self.alpha, self.method, self.method_params):
            w.observe(lambda _: self._on_objective(), "value")
        self.train_button.on_click(lambda _: self.train())
        self.stop_button.on_click(lambda _: self.stop())
        left = W.VBox([self.dataset, self.data_dir, self.teacher, self.family, self.spec,
                       W.HBox([self.depth, self.width]), W.HBox([self.image_size, self.init]), self.size,
                       self.method, self.method_info, self.method_params,
                       self.temperature, self.alpha, self.objective, W.HBox([self.epochs, self.labels]),
                       self.labels_hint, W.HBox([self.device, self.seed]), self.scratch,
                       W.HBox([self.train_button, self.stop_button]), self.progress, self.status],
                      layout=W.Layout(**COLUMN))
        super().__init__([W.HBox([left, self.curves]), self.table])
        self._on_dataset()
        self._on_method()
        self._on_objective()

    # -- controls ----------------------------------------------------------------
    def _on_dataset(self, _=None) -> None:
        own = self.dataset.value in ("image-folder", "csv")
        self.data_dir.layout.display = None if own else "none"
        path = self.data_dir.value.strip() or None
        if own:
            problem = "give the path of your images" if not path else recipes.check_data_path(self.dataset.value, path)
            if problem:
                self._ds = None
                self.size.value = f"<span style='color:#c00'>{_text(problem)}</span>"
                self.teacher.options = []
                return
        self._ds = load_dataset(self.dataset.value, path if own else None)
        opts = recipes.teacher_choices(self.dataset.value, self.store, data_dir=path if own else None)
        self.teacher.options = opts
        if opts:
            self.teacher.value = opts[0][1]
        defaults = recipes.dataset_defaults(self.dataset.value)
        self.epochs.value = defaults.epochs
        self.labels.value = defaults.labels or 0
        self._on_model()

    def model_config(self) -> ModelConfig:
        self.spec.layout.display = None if self.family.value == "spec" else "none"
        if self.family.value == "spec":
            return parse_model(self.spec.value)
        spec = FAMILIES[self.family.value]
        depth = int(self.depth.value) if spec.default_depth is not None else None
        if spec.depth_choices and depth not in spec.depth_choices:
            depth = spec.default_depth
        width = self.width.value if spec.default_width is not None else None
        if width is not None and self.family.value != "mobilenet_v2":
            width = int(width)
        return ModelConfig(self.family.value, depth, width)

    def input_shape(self, config: ModelConfig) -> tuple[int, int, int]:
        """The student's input: the data set's, at the size field (0: unchanged), in colour for torchvision/timm."""
        C, H, _ = self._ds.input_shape
        size = int(self.image_size.value) or H
        return (3 if config.family in ("torchvision", "timm") else C, size, size)

    def _on_model(self) -> None:
        if self._ds is None:
            return
        try:
            cfg = self.model_config()
            shape = self.input_shape(cfg)
            m = build_model(cfg, shape, self._ds.num_classes)
            check_input(m, shape)

            self.size.value = (f"<b>{_text(cfg.label())}</b> at {'×'.join(map(str, shape))}: {count_params(m):,} "
                               f"parameters · {format_flops(flops_per_sample(m, shape))} per image")
        except ValueError as e:
            self.size.value = f"<span style='color:#c00'>{_text(str(e))}</span>"

    def params(self) -> dict:
        """The method's hyperparameters: the params field, with T (if the method has one) and kd's α from the sliders."""
        pairs = [p.strip() for p in self.method_params.value.split(",") if p.strip()]
        params = parse_params(pairs)
        m = METHODS[self.method.value]
        if m.temperature_key and m.temperature_key not in params:
            params[m.temperature_key] = float(self.temperature.value)
        if m.weight_key and m.weight_key not in params:
            params[m.weight_key] = float(self.alpha.value)
        return params

    def built_method(self) -> Method:
        """The chosen method with the current hyperparameters (ValueError if they are invalid)."""
        return METHODS[self.method.value](self.params())

    def _on_method(self) -> None:
        """A new method: its description, and the T slider at its default (greyed out if it has none)."""
        m = METHODS[self.method.value]
        defaults = ", ".join(f"{k}={v}" for k, v in m.defaults.items())
        self.method_info.value = (f"<small>{_text(m.description)}. <i>{_text(m.citation)}</i><br>"
                                  f"defaults: {_text(defaults)}</small>")
        self.temperature.disabled = m.temperature_key is None
        if m.temperature_key:
            self.temperature.value = float(m.defaults[m.temperature_key])
        self.alpha.disabled = m.weight_key is None

    def _on_objective(self) -> None:
        try:
            m = self.built_method()
        except ValueError as e:
            self.objective.value = f"<span style='color:#c00'>{_text(str(e))}</span>"
            return
        note = f"<br><small>{_text(m.note)}</small>" if m.note else ""
        self.objective.value = f"<code>{_text(m.objective_text())}</code>{note}"

    def configs(self) -> list[TrainConfig]:
        """[scratch twin, distilled run], or just the distilled run without the scratch box ticked."""
        if self._ds is None:
            raise ValueError("choose a data set first (your own data needs a folder or a CSV file)")
        model = self.model_config()
        C, H, _ = self._ds.input_shape
        shape = self.input_shape(model)
        own = self.dataset.value in ("image-folder", "csv")
        kd = TrainConfig(kind="kd", dataset=self.dataset.value, data_dir=self.data_dir.value.strip() if own else None,
                         model=model, teacher=self.teacher.value, method=self.method.value,
                         method_params=self.params(), epochs=int(self.epochs.value),
                         labels=int(self.labels.value) or None, device=self.device.value, seed=int(self.seed.value),
                         image_size=shape[1] if shape[1] != H or own else None,
                         channels=shape[0] if shape[0] != C else None, init=self.init.value.strip() or None)
        return recipes.distill_configs(kd, scratch=self.scratch.value)

    # -- jobs -------------------------------------------------------------------------
    def train(self) -> list[str]:
        """Queue the KD run (and its scratch twin) and start following them; returns their run ids."""
        try:
            self.run_ids = launch(self.configs(), self.store, "notebook: DistillPanel", runner=self.runner,
                                  group=new_run_id("notebook"))
        except Exception as e:
            self.status.value = f"<span style='color:#c00'>Cannot train: {_text(friendly_error(e))}</span>"
            return []
        self.train_button.disabled, self.stop_button.disabled = True, False
        self.status.value = _text(f"queued {', '.join(self.run_ids)}")
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()
        return self.run_ids

    def stop(self) -> None:
        for rid in self.run_ids:
            if self.runner.status(rid)["state"] not in FINISHED:
                self.runner.cancel(rid)
        self.status.value = "stop sent"

    def wait(self, timeout: float = 600.0) -> list[dict]:
        """Block until the queued runs finish; returns their statuses."""
        if self._thread is not None:
            self._thread.join(timeout)
        return [self.runner.status(rid) for rid in self.run_ids]

    def _follow(self) -> None:
        while True:
            finished = self.refresh()
            if finished:
                break
            time.sleep(self.poll_s)
        self.train_button.disabled, self.stop_button.disabled = False, True

    def refresh(self) -> bool:
        """Redraw progress, status and curves from the run store; True once every run has finished."""
        runs = [self.store.get(rid) for rid in self.run_ids]
        statuses = [r.status() for r in runs]
        fractions = [1.0 if s["state"] in FINISHED else float((s.get("progress") or {}).get("fraction", 0.0))
                     for s in statuses]
        self.progress.value = sum(fractions) / max(1, len(fractions))
        parts = []
        for r, s in zip(runs, statuses):
            msg = _text(f"{plots.ROLE_NAMES.get(r.config.get('kind'), '?')}: {s['state']}")
            if s["state"] == "failed":
                msg += f" <span style='color:#c00'>({_text(str(s.get('error')))})</span>"
            parts.append(msg)
        self.status.value = " · ".join(parts)
        series, colors = describe.curve_series(runs)
        if series:
            _redraw(self.curves, plots.training_curves(series, colors))
        done = all(s["state"] in FINISHED for s in statuses)
        if done:
            finished = [r for r in runs if r.state == "done"]
            self.table.outputs = ()
            if finished:  # append_display_data is safe from this polling thread; `with output:` is not
                self.table.append_display_data(comparison_table(finished))
        return done


class SearchPanel(W.VBox):
    """A search of one method's hyperparameters on Ray Tune: ranges, budget, Launch and Cancel, the trials as they
    arrive, the optimisation history and the parallel coordinates, and the best configuration's KD gain.

    The search runs in the background (`search.start_search`), like the app's, so the kernel stays free;
    `wait()` blocks until it ends, for scripts and tests.
    """

    def __init__(self, dataset: str | None = None, store: RunStore | None = None, poll_s: float = 1.0):
        self.store, self.poll_s = store or RunStore(), poll_s
        self.group: str | None = None
        self._thread: threading.Thread | None = None
        self.dataset = W.Dropdown(options=_datasets(), value=dataset or recipes.default_dataset(),
                                  description="data set")
        self.teacher = W.Dropdown(description="teacher")
        self.family = W.Dropdown(options=["mlp", "cnn", "resnet"], value="mlp", description="student", **_half())
        self.width = W.BoundedIntText(value=32, min=1, max=1024, description="width", **_half())
        self.epochs = W.BoundedIntText(value=3, min=1, max=500, description="epochs", **_half())
        self.labels = W.BoundedIntText(value=0, min=0, max=10**7, description="labels", **_half(),
                                       tooltip="visible training labels; 0 = all")
        self.method = W.Dropdown(options=[(f"{k} · {METHODS[k].title}", k) for k in DISTILLATION_METHODS
                                             if not METHODS[k].only_tokens],  # language models: the CLI
                                 value="dkd", description="method")
        self.ranges = W.Text(description="ranges", layout=W.Layout(width="420px"),
                             placeholder="name=low:high[:log][:int]; e.g. beta=1:16:log; temperature=1:8")
        self.trials = W.BoundedIntText(value=4, min=1, max=500, description="trials", **_half())
        self.seeds = W.BoundedIntText(value=3, min=1, max=10, description="seeds", **_half(),
                                      tooltip="the best configuration over this many seeds, each with its scratch twin")
        self.scheduler = W.Dropdown(options=list(search.SCHEDULERS), value="asha", description="stopping", **_half())
        self.launch_button = W.Button(description="Search", button_style="primary", icon="search")
        self.cancel_button = W.Button(description="Cancel", button_style="warning", icon="stop", disabled=True)
        self.status = W.HTML()
        self.progress = W.FloatProgress(value=0.0, min=0.0, max=1.0, description="trials")
        self.history = go.FigureWidget()
        self.parallel = go.FigureWidget()
        self.table = W.Output()
        self.dataset.observe(self._on_dataset, "value")
        self.method.observe(lambda _: self._on_method(), "value")
        self.launch_button.on_click(lambda _: self.launch())
        self.cancel_button.on_click(lambda _: self.cancel())
        left = W.VBox([self.dataset, self.teacher, W.HBox([self.family, self.width]),
                       W.HBox([self.epochs, self.labels]), self.method, self.ranges,
                       W.HBox([self.trials, self.seeds]), self.scheduler,
                       W.HBox([self.launch_button, self.cancel_button]), self.progress, self.status],
                      layout=W.Layout(**COLUMN))
        super().__init__([W.HBox([left, self.history]), self.parallel, self.table])
        self._on_dataset()
        self._on_method()

    def _on_dataset(self, _=None) -> None:
        opts = recipes.teacher_choices(self.dataset.value, self.store)
        self.teacher.options = opts
        if opts:
            self.teacher.value = opts[0][1]

    def _on_method(self) -> None:
        name = self.method.value
        first = first_searched(name)
        r = default_range(name, first) if first else None
        self.ranges.value = f"{r.name}={r.low:g}:{r.high:g}{':log' if r.log else ''}" if r else "lr=3e-4:1e-2:log"

    def base(self) -> TrainConfig:
        name = self.method.value
        return TrainConfig(kind="kd", dataset=self.dataset.value, method=name,
                           teacher=self.teacher.value if METHODS[name].needs_teacher else None,
                           model=ModelConfig(self.family.value, depth=1, width=int(self.width.value)),
                           epochs=int(self.epochs.value), labels=int(self.labels.value) or None)

    def parsed_ranges(self):
        return [parse_range(t) for t in self.ranges.value.replace(",", ";").split(";") if t.strip()]

    def launch(self) -> str | None:
        """Check the inputs, start the search in the background and follow it; returns its group."""
        try:
            group = launch_search(self.store, self.base(), self.parsed_ranges(), int(self.trials.value),
                                  new_run_id("search"), "notebook: search_panel", seeds=int(self.seeds.value),
                                  scheduler=self.scheduler.value)
        except Exception as e:
            self.status.value = f"<span style='color:#c00'>Cannot search: {_text(friendly_error(e))}</span>"
            return None
        self.group = group
        self.launch_button.disabled, self.cancel_button.disabled = True, False
        self.status.value = _text(f"started {group}: Ray takes a few seconds to start")
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()
        return group

    def cancel(self) -> None:
        if self.group:
            self.status.value = _text(cancel_search(self.store, self.group))

    def wait(self, timeout: float = 900.0) -> dict:
        """Block until the search ends; returns its record (state, best, gain, final runs)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return search_status(self.store, self.group) or {}

    def _follow(self) -> None:
        while not self.refresh():
            time.sleep(self.poll_s)
        self.launch_button.disabled, self.cancel_button.disabled = False, True

    def refresh(self) -> bool:
        """Redraw from the run store; True once the search has ended."""
        st = search_status(self.store, self.group) or {}
        trials = trial_table(self.store, self.group)
        finished = [t for t in trials if t["state"] not in ("queued", "running")]
        self.progress.value = min(1.0, len(finished) / max(1, st.get("trials", 1)))
        state = st.get("state", "starting")
        done = sum(t["state"] == "done" for t in trials)  # trained to their end; the others stopped or failed
        text = _text(f"{state}: {done} of {st.get('trials', '?')} trials done"
                     + (f", {len(finished) - done} stopped early or failed" if len(finished) > done else ""))
        if st.get("best"):
            text += _text(f" · best on validation {score_text(st['best'])} at {format_values(st['best']['values'])}")
        if st.get("gain") is not None and st.get("test_ppl") is not None:
            text += _text(f" · perplexity below scratch on test {st['gain']:+,.1f} ({st.get('verdict')})")
        elif st.get("gain") is not None:
            text += _text(f" · KD gain over scratch on test {100 * st['gain']:+.2f} pts ({st.get('verdict')})")
        if state == "failed":
            text += f" <span style='color:#c00'>({_text(str(st.get('error')))})</span>"
        self.status.value = text
        scored = [t for t in trials if t.get("score", t.get("val_acc")) is not None]
        if scored:
            _redraw(self.history, plots.search_history(trials))
            _redraw(self.parallel, plots.search_parallel(scored))
        if trials:  # append_display_data is safe from the polling thread; `with output:` is not
            import pandas as pd


            self.table.outputs = ()
            self.table.append_display_data(pd.DataFrame(trial_rows(trials)))
        return state in ("done", "cancelled", "failed")


def search_panel(dataset: str | None = None, store: RunStore | None = None) -> SearchPanel:
    """The Sweep page's Search mode in a notebook: `display(search_panel())`."""
    return SearchPanel(dataset, store)


def _as_runs(runs, store: RunStore | None = None) -> list[Run]:
    store = store or RunStore()
    if isinstance(runs, str):  # a group name
        return store.list(group=runs)
    return [store.get(r) if isinstance(r, str) else r for r in runs]


def comparison_table(runs, aggregated: bool = False, wide: bool = False, store: RunStore | None = None):
    """The comparison table as a pandas DataFrame, with the app's columns (method and artifact where they tell
    runs apart). `runs`: run ids, Run objects, or a group name; with `store`, scratch twins join from it."""
    import pandas as pd

    c = build_comparison(_as_runs(runs, store), store, aggregated, wide)
    return pd.DataFrame(c.cells(), columns=[name for name, _ in c.columns])


def compare(runs, store: RunStore | None = None, aggregated: bool = False, wide: bool = False) -> W.VBox:
    """The app's Compare view: the headline, the table, training curves, Pareto plots and confusion matrices.

    `runs`: run ids, Run objects, or a group name.
    """
    import pandas as pd

    store = store or RunStore()
    c = build_comparison(_as_runs(runs, store), store, aggregated, wide)
    out = W.Output()
    if c.headline:
        out.append_display_data(W.HTML(f"<b>{_text(c.headline)}</b>"))
    out.append_display_data(pd.DataFrame(c.cells(), columns=[name for name, _ in c.columns]))
    notes = [w for w in (c.warning, c.int8_warning) if w] + [f"{subject}: {verdict}" for subject, verdict in c.verdicts]
    if notes:
        out.append_display_data(W.HTML("<br>".join(f"<small>{_text(n)}</small>" for n in notes)))
    device = next((r["device"] for r in c.rows if r.get("device")), None)
    figs = [plots.training_curves(*describe.curve_series(c.runs)),
            plots.pareto(c.rows, "latency_ms", device), plots.pareto(c.rows, "size_mb")]
    cms = c.confusion_matrices()
    if cms:
        cfg = c.runs[0].config
        try:
            classes = load_dataset(cfg["dataset"], cfg.get("data_dir"),
                                   allow_outside=cfg.get("allow_outside") is True).classes
        except Exception:  # the data set is gone: class numbers
            classes = [str(i) for i in range(len(next(iter(cms.values()))))]
        figs.append(plots.confusion_matrices(cms, classes))
    return W.VBox([out, *[go.FigureWidget(f) for f in figs]])


def sweep_heatmap(runs, store: RunStore | None = None) -> W.HBox:
    """The app's sweep heatmaps: mean test accuracy and KD gain over T × α (a language model's test perplexity and
    its drop against scratch), the seed spread on hover."""
    cells = grid_table(_as_runs(runs, store))
    if not cells:
        raise ValueError("no finished KD runs in these runs: run a sweep first (workbench.experiments.sweep or `kdw sweep`)")
    values = ("test_ppl", "ppl_gain") if any(c.get("test_ppl") is not None for c in cells) else ("test_acc", "kd_gain")
    return W.HBox([go.FigureWidget(plots.sweep_heatmap(cells, v)) for v in values])
