"""Dark knowledge: what a teacher's softened probabilities say, and why the T² factor is there.

The page keeps its state in the address (?dataset=fashion-mnist&image=17&T=4), so a lecturer can put a link on a
slide and the class opens exactly that view.
"""

from __future__ import annotations

import streamlit as st
import torch

from workbench.analysis import plots
from workbench.app import common
from workbench.core.explain import first_correct_index, t_squared_scaling, teacher_view
from workbench.core.methods import KD
from workbench.experiments import recipes


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
            ss["dk_index_dataset"] = ss.get("dk_dataset", q.get("dataset"))
    except ValueError:
        st.caption("The link's T or image number is not a number; showing the defaults.")


def page() -> None:
    st.title("Dark knowledge")
    st.markdown("A trained teacher is confident about the true class, but the small probabilities it gives the "
                "*other* classes say which ones this image resembles. Dividing the logits by a temperature T "
                "before the softmax makes those visible; the student learns from them.")
    ss = st.session_state

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
        c1, c2 = st.columns([1, 1], vertical_alignment="bottom")
        c1.number_input(f"Test image (0–{n_test - 1})", 0, n_test - 1, key="dk_index")
        c2.button("Random", icon=":material/casino:", key="dk_random", on_click=_random_image, args=(n_test,),
                  help="a random test image", use_container_width=True)
        T = st.slider("Temperature T", 1.0, 20.0, 4.0, 0.5, key="dk_T",
                      help="softmax(z / T): T = 1 is the usual softmax; a higher T flattens it")
        alpha = st.slider("α (weight of the KD term)", 0.0, 1.0, 0.9, 0.05, key="dk_alpha")
        students = {common.run_label(r): r for r in common.store().list(state="done")
                    if r.config.get("dataset") == ds_name and not r.config.get("data_dir")
                    and r.config.get("kind") in ("kd", "scratch")}
        student_label = "none"
        if not common.presenting() or students:
            student_label = st.selectbox("Compare with a trained student (optional)", ["none", *students],
                                         key="dk_student")
    idx = int(ss["dk_index"])
    st.query_params.update({"dataset": ds_name, "image": str(idx), "T": f"{T:g}"})  # a link to this exact view
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
        common.objective(KD({"temperature": T, "alpha": alpha}))
        m1, m2, m3 = st.columns(3)
        m1.metric("Entropy, T = 1", f"{view.entropy_t1:.2f} nats")
        m2.metric(f"Entropy, T = {T:g}", f"{view.entropy_T:.2f} nats",
                  delta=f"{view.entropy_T - view.entropy_t1:+.2f}", delta_color="off")
        m3.metric("Largest possible", f"{torch.log(torch.tensor(float(len(ds.classes)))).item():.2f} nats")
        common.chart(plots.probability_bars(ds.classes, view.probs_t1.tolist(), view.probs_T.tolist(), T,
                                            view.true_class, student_probs, "student"), "dk_bars")
        common.chart(plots.dark_knowledge_ranking(ds.classes, view.probs_T.tolist(), view.true_class, T), "dk_ranking")
        top = ", ".join(f"{c} ({100 * p:.1f}%)" for c, p in view.wrong_ranking[:3])
        st.info(f"At T = {T:g} the teacher says this {ds.classes[view.true_class]} looks most like: {top}.")

        st.subheader("Why multiply by T²?")
        z_s = student_view.logits if student_view is not None else torch.zeros_like(view.logits)
        temps = [1, 2, 4, 8, 16, 20]
        sc = t_squared_scaling(z_s[None], view.logits[None], temps)
        fig = plots.temperature_scaling(sc["temperature"], sc["kd_with"], sc["kd_without"], sc["grad_with"],
                                        sc["grad_without"])
        who = "the chosen student" if student_view is not None else "an untrained student (all logits 0)"
        fig.layout.meta["caption"] += f" Computed for this image, between the teacher and {who}."
        common.chart(fig, "dk_tsq")
