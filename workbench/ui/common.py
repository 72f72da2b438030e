"""Pieces every page shares: cached data and teachers, choices, the objective, errors.

UI code only; all logic lives in the core. No module-level mutable state: caches go
through `st.cache_resource` / `st.cache_data`, per-user state through `st.session_state`.
"""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st
import torch

from workbench.data import available_datasets, load_dataset
from workbench.explain import objective_latex
from workbench.jobs import LocalQueueRunner, friendly_error
from workbench.models import ModelConfig, build_model, count_params
from workbench.runs import Run, RunStore
from workbench.teachers import load_teacher, shipped_teachers

ROLE_NAMES = {"teacher": "teacher", "scratch": "scratch (α = 0)", "kd": "distilled"}


def store() -> RunStore:
    return RunStore()


def runner() -> LocalQueueRunner:
    return LocalQueueRunner(store())


@st.cache_resource(show_spinner="Loading the data set…")
def dataset(name: str):
    return load_dataset(name)


@st.cache_resource(show_spinner="Loading the teacher…", max_entries=16)
def teacher(spec: str, runs_root: str, mtime: float):
    """A frozen teacher; `mtime` of its file keys the cache so a replaced file is reloaded."""
    return load_teacher(spec, RunStore(runs_root))


def teacher_for(spec: str):
    return teacher(spec, str(store().root), _spec_mtime(spec))


def _spec_mtime(spec: str) -> float:
    for c in shipped_teachers():
        if c["name"] == spec:
            return Path(c["path"]).stat().st_mtime
    p = Path(spec)
    if p.is_file():
        return p.stat().st_mtime
    run = store().root / spec / "student.safetensors"
    return run.stat().st_mtime if run.is_file() else 0.0


def dataset_choices() -> tuple[list[str], dict[str, str]]:
    """Embedded data sets that load here, and for each missing one, how to get it."""
    avail = available_datasets()
    return [k for k, v in avail.items() if v is None], {k: v for k, v in avail.items() if v is not None}


def dataset_picker(key: str, label: str = "Data set") -> str:
    names, missing = dataset_choices()
    default = "fashion-mnist" if "fashion-mnist" in names else "digits"
    name = st.selectbox(label, names, index=names.index(default), key=key,
                        help="Embedded data sets that are installed here.")
    for ds, how in missing.items():
        st.caption(f"**{ds}** is not installed: {how}")
    return name


def teacher_choices(dataset_name: str) -> dict[str, str]:
    """label -> teacher spec: shipped teachers, finished teacher runs, uploaded files."""
    out = {}
    for c in shipped_teachers(dataset_name):
        out[f"{c['name']} (shipped, {100 * c['test_accuracy']:.2f}% test)"] = c["name"]
    for r in store().list(kind="teacher", state="done"):
        if r.config.get("dataset") == dataset_name:
            acc = r.summary.get("test", {}).get("accuracy")
            out[f"{r.run_id} (teacher run{'' if acc is None else f', {100 * acc:.2f}% test'})"] = r.run_id
    for p in sorted(uploads_dir().glob("*.safetensors")):
        try:
            t = teacher_for(str(p))
        except Exception:
            continue
        if tuple(t.model.kdw_input_shape) == tuple(dataset(dataset_name).input_shape):
            out[f"{p.stem} (uploaded)"] = str(p)
    return out


def uploads_dir() -> Path:
    return store().root / ".uploads"


SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_upload_name(name: str) -> str:
    """A file name reduced to letters, digits, '_', '.', '-' (never a path), ending in .safetensors."""
    stem = SAFE_NAME.sub("-", Path(name).name).strip(".-") or "teacher"
    stem = stem[:-12] if stem.lower().endswith(".safetensors") else stem
    return f"{stem[:48]}.safetensors"


def objective(temperature: float, alpha: float) -> None:
    """The objective with the current T and α, and what α means here."""
    st.latex(objective_latex(temperature, alpha))
    st.caption("α weights the distillation term: α = 0 is the student trained without the teacher (scratch), "
               "α = 1 is pure distillation. (torchdistill and Keras put their α on the cross-entropy.)")


def show_error(prefix: str, e: BaseException) -> None:
    st.error(f"{prefix}: {friendly_error(e)}")


@st.cache_data(show_spinner=False, max_entries=256)
def model_figures(config: dict, input_shape: tuple, num_classes: int) -> dict:
    """Params and FLOPs of a model config, for the live read-out beside the knobs."""
    from workbench.evaluate import flops_per_sample

    m = build_model(ModelConfig.from_dict(config), input_shape, num_classes)
    return {"params": count_params(m), "flops": flops_per_sample(m, input_shape)}


def student_picker(key: str, input_shape, num_classes: int, default: ModelConfig | None = None) -> ModelConfig:
    """Family and size knobs, with params and FLOPs shown live."""
    from workbench.models import FAMILIES

    default = default or ModelConfig("mlp", depth=1, width=64)
    fams = list(FAMILIES)
    family = st.selectbox("Student family", fams, index=fams.index(default.family), key=f"{key}_family",
                          help="; ".join(f"{k}: {v.description}" for k, v in FAMILIES.items()))
    spec = FAMILIES[family]
    depth = width = None
    c1, c2 = st.columns(2)
    if spec.default_depth is not None:
        if spec.depth_choices:
            depth = c1.selectbox("Depth", spec.depth_choices, index=spec.depth_choices.index(spec.default_depth),
                                 key=f"{key}_depth_{family}")
        else:
            d0 = default.depth if default.family == family and default.depth else spec.default_depth
            depth = c1.number_input("Depth", 1, 8, int(d0), key=f"{key}_depth_{family}",
                                    help="hidden layers (mlp) or conv blocks per stage (cnn)")
    if spec.default_width is not None:
        if family == "mobilenet_v2":
            width = c2.select_slider("Width multiplier", [0.25, 0.35, 0.5, 0.75, 1.0], value=1.0,
                                     key=f"{key}_width_{family}")
        else:
            w0 = default.width if default.family == family and default.width else spec.default_width
            width = c2.number_input("Width", 2, 1024, int(w0), key=f"{key}_width_{family}",
                                    help="hidden units (mlp) or base channels (cnn, resnet)")
    config = ModelConfig(family, depth, width)
    figs = model_figures(config.to_dict(), tuple(input_shape), num_classes)
    from workbench.compare import format_flops

    st.caption(f"**{config.label()}**: {figs['params']:,} parameters · {format_flops(figs['flops'])} per image "
               "(multiply-add = 2)")
    return config


def run_label(run: Run) -> str:
    c = run.config
    kind = c.get("kind", "?")
    method = c.get("method") or "kd"
    extra = ""
    if kind == "kd":
        extra = f" T={c.get('temperature')} α={c.get('alpha')}" if method == "kd" else f" [{method}]"
    seed = f" seed {c.get('seed')}" if c.get("seed") is not None else ""
    return f"{ROLE_NAMES.get(kind, kind)} {c.get('model_label', '')}{extra}{seed} · {run.run_id}"


def device_choices() -> list[str]:
    from workbench.train import available_devices

    return available_devices()


def threads_note() -> str:
    return f"{torch.get_num_threads()} CPU threads"


def method_picker(key: str):
    """The distillation method, its description and citation, and its own hyperparameters."""
    from workbench.methods import METHODS

    names = list(METHODS)
    name = st.selectbox("Method", names, key=key, format_func=lambda n: f"{n} · {METHODS[n].title}",
                        help="Every method adds its term to the cross-entropy on the visible labels.")
    m = METHODS[name]
    st.caption(f"{m.description}. *{m.citation}*")
    params = {}
    if m.defaults:
        with st.expander(f"{m.title} hyperparameters (defaults from its paper or its authors' code)"):
            cols = st.columns(2)
            for i, (k, v) in enumerate(m.defaults.items()):
                col, help_ = cols[i % 2], m.help.get(k)
                if isinstance(v, str):
                    params[k] = col.text_input(k, v, key=f"{key}_{name}_{k}", help=help_)
                elif isinstance(v, int):
                    params[k] = int(col.number_input(k, value=v, step=1, key=f"{key}_{name}_{k}", help=help_))
                else:
                    params[k] = float(col.number_input(k, value=float(v), format="%g", key=f"{key}_{name}_{k}",
                                                       help=help_))
    changed = {k: v for k, v in params.items() if v != m.defaults[k]}
    return m, changed
