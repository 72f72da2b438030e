"""Plots as pure functions: data in, `plotly.graph_objects.Figure` out.

The app, the widgets, the notebooks and the HTML report all call these, so a chart
looks the same everywhere. Every figure has a title, axis labels with units, and a
one-line caption saying what it shows and how to read it; `caption(fig)` returns it.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis.format import KD, ROLE_COLORS, ROLE_NAMES, SCRATCH, TEACHER, artifact_label, format_values

TERM_DASHES = ("dash", "dot", "dashdot", "longdash", "longdashdot")  # a run's loss terms, after its solid total
PALETTE = ["#E45756", "#4C78A8", "#54A24B", "#F58518", "#B279A2", "#72B7B2", "#FF9DA6", "#9D755D",
           "#EECA3B", "#BAB0AC"]


def _finish(fig: go.Figure, title: str, caption_text: str, height: int | None = None,
            legend_below: bool = True) -> go.Figure:
    """Title, caption, template; the legend goes below the plot (never over the title, at any width).

    The title gets a top margin of its own (`fit_title`). A legend below sits at the figure's bottom edge (container-anchored) and
    pushes the margin, so slanted tick labels and the axis title stay clear of it."""
    legend = (dict(orientation="h", yref="container", yanchor="bottom", y=0.0, xanchor="left", x=0.0)
              if legend_below else dict(orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.02))
    fig.update_layout(title=dict(text=title, x=0.0, xanchor="left"), meta={"caption": caption_text},
                      margin=dict(l=60, r=30, t=30, b=60), template="plotly_white", legend=legend, height=height or 450)
    return fit_title(fig, 80)


def wrap_title(text: str, width: int) -> str:
    """A plot title broken into lines of at most about `width` characters, between words (Plotly's <br>).

    >>> wrap_title("Dark knowledge: which wrong classes the teacher finds similar (T = 6)", 40)
    'Dark knowledge: which wrong classes the<br>teacher finds similar (T = 6)'
    >>> wrap_title("Softened probabilities: T = 1 vs T = 4", 28)
    'Softened probabilities:<br>T = 1 vs T = 4'
    """
    import textwrap

    keep = "\u00a0=\u00a0"  # "T = 1" stays on one line
    lines = textwrap.wrap(text.replace(" = ", keep), width)
    return "<br>".join(lines).replace(keep, " = ") or text


def fit_title(fig: go.Figure, width: int) -> go.Figure:
    """Wrap the title at `width` characters and give it a top margin of its own, tall enough for all its lines.

    Plotly never wraps a title and its automargin counts one line; its first line sits on the anchor and the
    others go below, so the anchor is the first line's middle, near the figure's top edge."""
    title = fig.layout.title.text
    if not title:
        return fig
    title = wrap_title(title.replace("<br>", " "), width)
    size = fig.layout.title.font.size or 17  # plotly_white's title: 17 px
    over = any(a.yref == "paper" and (a.y or 0) >= 0.99 for a in fig.layout.annotations)  # subplot titles
    top, below = 8, (40 if over else 10)
    line = size * 1.3
    margin = max(fig.layout.margin.t or 0, int(top + (title.count("<br>") + 1) * line + below))
    height = (fig.layout.height or 450) + margin - (fig.layout.margin.t or 0)
    fig.update_layout(title=dict(text=title, yref="container", yanchor="middle", y=1 - (top + line / 2) / height,
                                 automargin=False), margin_t=margin, height=height)
    return fig


def accuracy_range(values, min_span: float = 5.0) -> list[float] | None:
    """A y-range in % around `values` at least `min_span` points tall, within [0, 100], so that a 0.1-point
    wiggle does not look like a crash.

    >>> accuracy_range([79.48, 79.60])
    [77.04, 82.04]
    """
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    pad = max((min_span - (hi - lo)) / 2, 0.05 * (hi - lo))
    lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
    if hi - lo < min_span:  # against a bound: extend the other way
        lo, hi = (max(0.0, hi - min_span), hi) if hi >= 100.0 else (lo, min(100.0, lo + min_span))
    return [round(lo, 2), round(hi, 2)]


def caption(fig: go.Figure) -> str:
    """The one-line caption stored in the figure."""
    meta = fig.layout.meta
    return meta.get("caption", "") if isinstance(meta, dict) else ""


# ---------------------------------------------------------------------------
# teaching: softened probabilities and the T² factor

def image(pixels, title: str = "Test image", label: str | None = None) -> go.Figure:
    """A (C, H, W) or (H, W) array of [0, 1] pixels, shown as an image."""
    import numpy as np

    arr = np.asarray(pixels, dtype=float)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        fig = go.Figure(go.Heatmap(z=arr[::-1], colorscale="gray_r" if arr.mean() < 0.5 else "gray",
                                   showscale=False, hoverinfo="skip"))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False, scaleanchor="x")
    else:
        fig = go.Figure(go.Image(z=(arr.transpose(1, 2, 0) * 255).astype("uint8")))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    return _finish(fig, title, f"The test image{f' (true class: {label})' if label else ''}, "
                              f"{arr.shape[-1]}×{arr.shape[-2]} pixels.", height=300)


def probability_bars(classes, probs_t1, probs_T, temperature: float, true_class: int | None = None,
                     student_probs=None, student_label: str = "student") -> go.Figure:
    """Teacher probabilities at T = 1 and at T, side by side per class (optionally a student at T)."""
    import torch

    from workbench.core.losses import entropy

    def h(p):
        return entropy(torch.as_tensor(p, dtype=torch.float64)).item()

    names = [f"{c} ✓" if i == true_class else str(c) for i, c in enumerate(classes)]
    fig = go.Figure()
    fig.add_bar(x=names, y=list(probs_t1), name=f"teacher, T = 1 (entropy {h(probs_t1):.2f} nats)",
                marker_color="#9ECAE9")
    fig.add_bar(x=names, y=list(probs_T), name=f"teacher, T = {temperature:g} (entropy {h(probs_T):.2f} nats)",
                marker_color=TEACHER)
    if student_probs is not None:
        fig.add_bar(x=names, y=list(student_probs),
                    name=f"{student_label}, T = {temperature:g} (entropy {h(student_probs):.2f} nats)",
                    marker_color=KD)
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="probability", range=[0, 1])
    fig.update_xaxes(title="class (✓ = true class)")
    return _finish(fig, f"Softened probabilities: T = 1 vs T = {temperature:g}",
                   "Each bar is softmax(z/T) for one class. A higher T flattens the distribution, so the "
                   "small probabilities of the wrong classes, the dark knowledge, become visible to the student.")


def next_token_bars(tokens, probs_t1, probs_T, temperature: float, entropy_t1: float, entropy_T: float,
                    student_probs=None, student_entropy: float | None = None, student_label: str = "student"
                    ) -> go.Figure:
    """A language model's next-token probabilities of its top tokens at T = 1 and at T (optionally a student's, at
    T, for the same tokens); the entropies in the legend are of the whole next-token distribution."""
    fig = go.Figure()
    names = [f"{i + 1}. {t}" for i, t in enumerate(tokens)]
    fig.add_bar(x=names, y=list(probs_t1), name=f"teacher, T = 1 (entropy {entropy_t1:.2f} nats)",
                marker_color="#9ECAE9")
    fig.add_bar(x=names, y=list(probs_T), name=f"teacher, T = {temperature:g} (entropy {entropy_T:.2f} nats)",
                marker_color=TEACHER)
    if student_probs is not None:
        tail = f" (entropy {student_entropy:.2f} nats)" if student_entropy is not None else ""
        fig.add_bar(x=names, y=list(student_probs), name=f"{student_label}, T = {temperature:g}{tail}",
                    marker_color=KD)
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="probability", range=[0, max(1e-3, *probs_t1, *probs_T) * 1.05])
    fig.update_xaxes(title="next token (␣ = a space), the teacher's most likely first", tickangle=-45)
    if temperature == 1:
        how = ("At T = 1 (a language model's distillation default: its cached top k holds most of the mass only "
               "there) both bars are the same; raise T to see the tokens after the first get a share: the "
               "alternatives the teacher finds plausible, which token-level distillation passes on.")
    elif max(probs_T, default=0) < 0.02:
        how = (f"At T = {temperature:g} the mass spreads over the whole vocabulary, so every one of these tokens "
               "keeps under 2%: too flat to teach much; a T of 1 to 2 is where token-level distillation works.")
    else:
        how = ("At a higher T the tokens after the first get a visible share: the alternatives the teacher finds "
               "plausible, which token-level distillation passes on.")
    return _finish(fig, f"Next-token probabilities: T = 1 vs T = {temperature:g}",
                   "Each bar is softmax(z/T) of one token over the whole vocabulary, for the teacher's most likely "
                   "next tokens. " + how)


def dark_knowledge_ranking(classes, probs_T, true_class: int, temperature: float) -> go.Figure:
    """The wrong classes ranked by the teacher's softened probability."""
    wrong = [(float(p), str(c)) for i, (c, p) in enumerate(zip(classes, probs_T)) if i != true_class]
    wrong.sort()
    fig = go.Figure(go.Bar(x=[p for p, _ in wrong], y=[c for _, c in wrong], orientation="h",
                           marker_color=TEACHER, text=[f"{100 * p:.1f}%" for p, _ in wrong],
                           textposition="outside"))
    fig.update_xaxes(title=f"probability at T = {temperature:g}", range=[0, max(p for p, _ in wrong) * 1.25 + 1e-9])
    fig.update_yaxes(title="wrong class")
    return _finish(fig, f"Dark knowledge: which wrong classes the teacher finds similar (T = {temperature:g})",
                   f"The classes other than the true one ({classes[true_class]}), ranked by the teacher's "
                   "probability: the top ones are what the teacher thinks this image resembles.", height=360)


def log_ticks(values, min_ratio: float = 1.4) -> list[float]:
    """Tick values for a log axis that never sit on one another: each at least `min_ratio` above the one before,
    the largest always kept (16 and 20 overlap at 1024 px; 20 stays).

    >>> log_ticks([1, 2, 4, 8, 16, 20])
    [1, 2, 4, 8, 20]
    """
    kept: list[float] = []
    for v in sorted(values):
        if kept and v / kept[-1] < min_ratio:
            if v != max(values):
                continue
            kept.pop()
        kept.append(v)
    return kept


def temperature_scaling(temperatures, kd_with, kd_without, grad_with, grad_without) -> go.Figure:
    """The KD term and its gradient norm against T, with and without the T² factor (log scale)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("KD term", "gradient norm ‖∂L/∂z_s‖"),
                        horizontal_spacing=0.16)
    fig.add_scatter(x=temperatures, y=kd_with, name="with T²", line_color=KD, row=1, col=1)
    fig.add_scatter(x=temperatures, y=kd_without, name="without T²", line=dict(color=KD, dash="dot"), row=1, col=1)
    fig.add_scatter(x=temperatures, y=grad_with, name="gradient, with T²", line_color=TEACHER, row=1, col=2)
    fig.add_scatter(x=temperatures, y=grad_without, name="gradient, without T²",
                    line=dict(color=TEACHER, dash="dot"), row=1, col=2)
    ticks = log_ticks(temperatures)
    fig.update_xaxes(title="temperature T", type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    fig.update_yaxes(type="log", dtick=1, exponentformat="power")  # decades only: no minor-tick labels
    fig.update_yaxes(title="loss (nats)", row=1, col=1)
    fig.update_yaxes(title="L2 norm of the gradient", row=1, col=2)
    return _finish(fig, "Why T²: the KD term and its gradient as T grows",
                   "Without T² the gradient shrinks like 1/T² (dotted) and the KD term would fade next to the "
                   "cross-entropy; with T² (solid) it stays of the same order at every T.", height=440)


# ---------------------------------------------------------------------------
# training curves

def loss_terms(rows: list[dict]) -> list[str]:
    """The names of the loss terms logged in metrics rows (``loss_ce`` -> ``ce``), in order of appearance."""
    names: list[str] = []
    for r in rows:
        names += [k[5:] for k in r if k.startswith("loss_") and k[5:] not in names]
    return names


def training_curves(series: dict[str, list[dict]], colors: dict[str, str] | None = None,
                    terms: bool = True) -> go.Figure:
    """Per-epoch loss and validation accuracy (perplexity, for language models) of several runs. `series`: label
    -> metrics rows.

    Left: each run's objective (solid) and, where it has more than one, its named terms (dashed,
    dotted, ...), so a distilled run's cross-entropy can be read beside a scratch run's even though
    its total includes the T²-scaled KD term. Right: validation accuracy, or, for runs whose rows hold
    ``val_ppl``, validation perplexity on a log axis (lower is better).
    """
    lm = any("val_ppl" in r for rows in series.values() for r in rows)
    right = "validation perplexity" if lm else "validation accuracy"
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss and its terms", right))
    for i, (label, rows) in enumerate(series.items()):
        color = (colors or {}).get(label, PALETTE[i % len(PALETTE)])
        epochs = [r["epoch"] for r in rows]
        fig.add_scatter(x=epochs, y=[r.get("train_loss") for r in rows], name=label, legendgroup=label,
                        line_color=color, mode="lines+markers", row=1, col=1,
                        hovertemplate="epoch %{x}<br>objective %{y:.4f}<extra>" + label + "</extra>")
        names = loss_terms(rows)
        if terms and len(names) > 1:
            for j, term in enumerate(names):
                fig.add_scatter(x=epochs, y=[r.get(f"loss_{term}") for r in rows], name=f"{label}: {term} term",
                                legendgroup=label, mode="lines",
                                line=dict(color=color, dash=TERM_DASHES[j % len(TERM_DASHES)], width=1.5),
                                row=1, col=1, hovertemplate="epoch %{x}<br>" + term + " %{y:.4f}<extra>" + label
                                                            + "</extra>")
        if lm:
            y, hover = [r.get("val_ppl") for r in rows], "epoch %{x}<br>perplexity %{y:,.1f}<extra>"
        else:
            y, hover = [100 * r["val_acc"] if r.get("val_acc") is not None else None for r in rows], \
                "epoch %{x}<br>%{y:.2f}%<extra>"
        fig.add_scatter(x=epochs, y=y, name=label, legendgroup=label, showlegend=False, line_color=color,
                        mode="lines+markers", row=1, col=2, hovertemplate=hover + label + "</extra>")
    last = max((r["epoch"] for rows in series.values() for r in rows), default=1)
    fig.update_xaxes(title="epoch", tick0=1, dtick=max(1, math.ceil(last / 10)))  # whole epochs, ≤ 10 ticks
    fig.update_yaxes(title="loss (nats, as weighted in the objective)", row=1, col=1)
    if lm:
        fig.update_yaxes(title="perplexity (log scale; lower is better)", type="log", row=1, col=2)
        what = "perplexity on the fixed validation blocks (exp of the mean next-token cross-entropy; lower is better)"
    else:
        fig.update_yaxes(title="accuracy (%)", row=1, col=2,
                         range=accuracy_range([100 * r["val_acc"] for rows in series.values() for r in rows
                                               if r.get("val_acc") is not None]))
        what = "accuracy on the fixed validation split"
    return _finish(fig, "Training curves",
                   "Left: each run's training objective per epoch (solid) and its weighted terms (dashed and "
                   "dotted; they add up to the solid line). A distilled run's total includes the T²-scaled KD "
                   f"term, so compare its cross-entropy term with the scratch run's. Right: {what}.", height=480)


# ---------------------------------------------------------------------------
# comparison

def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another (lower x and higher y are better), sorted by x.

    >>> pareto_front([(1, 0.8), (2, 0.9), (3, 0.85), (0.5, 0.5)])
    [(0.5, 0.5), (1, 0.8), (2, 0.9)]
    """
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


AXES = {"latency_ms": "latency (ms, batch 1)", "size_mb": "size (MB, fp32 safetensors)",
        "params": "parameters", "flops": "FLOPs per sample (multiply-add = 2)",
        "throughput": "throughput (samples/s, batch 256)"}


VARIANT_SYMBOLS = {"onnx-fp32": "diamond", "onnx-int8": "square", "pruned-onnx-fp32": "triangle-up",
                   "pruned-onnx-int8": "triangle-down"}  # PyTorch rows are circles


def _variant_kind(variant: str) -> str:
    """The marker family of a variant: pruned (a `kdw export --prune` or a pipeline's prune step) or not, int8 or fp32."""
    pruned = variant.startswith("prune")
    return ("pruned-" if pruned else "") + ("onnx-int8" if variant.endswith("int8") else "onnx-fp32")


def pareto(rows: list[dict], x: str = "latency_ms", device: str | None = None) -> go.Figure:
    """Accuracy (perplexity, for language models: a log axis turned upside down, so up is still better) against
    latency or size; bubble area ∝ params; the Pareto frontier drawn.

    A run's deployed variants (rows with a `variant`) are joined to it by a thin line, PyTorch fp32 →
    ONNX fp32 → int8 → pruned, each kind with its own marker, in the run's role colour.
    """
    fig = go.Figure()
    lm = any(r.get("test_ppl") is not None for r in rows)
    key, scale = ("test_ppl", 1.0) if lm else ("test_acc", 100.0)

    def y(r):
        return scale * r[key]

    pts = [r for r in rows if r.get(x) is not None and r.get(key) is not None]
    hover_y = "ppl %{y:,.1f}" if lm else "acc %{y:.2f}%"
    max_params = max([r.get("params") or 1 for r in pts] or [1])
    parents = {r["run_id"]: r for r in pts if not r.get("variant")}
    for pid in dict.fromkeys(r.get("_parent") for r in pts if r.get("variant")):  # one chain per run with variants
        chain = [parents[pid]] if pid in parents else []
        chain += [r for r in pts if r.get("_parent") == pid]
        fig.add_scatter(x=[r[x] for r in chain], y=[y(r) for r in chain], mode="lines",
                        line=dict(color=ROLE_COLORS.get(chain[-1]["role"], TEACHER), width=1), opacity=0.6,
                        showlegend=False, hoverinfo="skip")
    for role in ("teacher", "scratch", "kd"):
        sel = [r for r in pts if r["role"] == role and not r.get("variant")]
        if not sel:
            continue
        fig.add_scatter(
            x=[r[x] for r in sel], y=[y(r) for r in sel], mode="markers", name=ROLE_NAMES[role],
            marker=dict(color=ROLE_COLORS[role], size=[8 + 40 * math.sqrt((r.get("params") or 0) / max_params)
                                                       for r in sel], opacity=0.75, line=dict(width=1, color="white")),
            text=[f"{r['model']}<br>{r.get('run_id', '')}" for r in sel],
            customdata=[[r.get("params"), r.get("temperature"), r.get("alpha")] for r in sel],
            hovertemplate="%{text}<br>" + hover_y + "<br>" + AXES.get(x, x) + " %{x:.4g}<br>params %{customdata[0]:,}"
                          "<extra>" + ROLE_NAMES[role] + "</extra>")
    for kind, symbol in VARIANT_SYMBOLS.items():
        sel = [r for r in pts if r.get("variant") and _variant_kind(r["variant"]) == kind]
        if not sel:
            continue
        fig.add_scatter(
            x=[r[x] for r in sel], y=[y(r) for r in sel], mode="markers",
            name=kind.replace("-", " ").replace("onnx", "ONNX"),
            marker=dict(symbol=symbol, size=11, color=[ROLE_COLORS.get(r["role"], TEACHER) for r in sel],
                        line=dict(width=1, color="black")),
            text=[f"{r['model']}<br>{r['run_id']}" for r in sel],
            hovertemplate="%{text}<br>" + hover_y + "<br>" + AXES.get(x, x) + " %{x:.4g}<extra>" + kind + "</extra>")
    front = pareto_front([(r[x], -y(r) if lm else y(r)) for r in pts])  # lower perplexity is better
    if len(front) > 1:
        fig.add_scatter(x=[p[0] for p in front], y=[-p[1] if lm else p[1] for p in front], mode="lines",
                        name="Pareto frontier",
                        line=dict(color="black", dash="dash", width=1))
    if 0 < len(pts) <= 12:  # few enough to name every point
        for r in pts:
            fig.add_annotation(x=math.log10(r[x]) if x in ("params", "flops", "size_mb") and r[x] > 0 else r[x],
                               y=math.log10(y(r)) if lm else y(r), text=str(r["model"]).split("(")[0] if r.get("variant")
                               else ROLE_NAMES.get(r["role"], r["role"]), showarrow=False, yshift=14,
                               font=dict(size=10, color="#555"))
    fig.update_xaxes(title=AXES.get(x, x) + (f" on {device}" if device else ""),
                     type="log" if x in ("params", "flops", "size_mb") else "linear")
    if lm:
        fig.update_yaxes(title="test perplexity (log scale, lower is up)", type="log", autorange="reversed")
    else:
        fig.update_yaxes(title="test accuracy (%)", range=accuracy_range([y(r) for r in pts]))
    variants = any(r.get("variant") for r in pts)
    return _finish(fig, f"{'Perplexity' if lm else 'Accuracy'} against {AXES.get(x, x).split(' (')[0]}",
                   "Up and to the left is better. Bubble area is proportional to the parameter count"
                   + ("; the dashed line joins the models that no other model beats on both axes." if len(front) > 1
                      else "; no model here is beaten on both axes by another, so there is no frontier to draw.")
                   + (" Thin lines join a run to its deployed variants (ONNX fp32 ◆, int8 ■, pruned ▲/▼), measured "
                      "in ONNX Runtime." if variants else ""), height=440)


COMPRESS_SYMBOLS = {"fp32": "diamond", "prune": "triangle-up", "heal": "star", "ptq": "square", "qat": "square-open",
                    "qad": "hexagram"}


def _compress_kind(variant: str) -> str:
    last = variant.rsplit("+", 1)[-1]
    for kind in ("prune", "heal", "ptq", "qat", "qad"):
        if last.startswith(kind):
            return kind
    return "fp32"


def compress_pareto(rows: list[dict], x: str = "latency_ms", device: str | None = None) -> go.Figure:
    """A compression pipeline on one plot: accuracy (a language model: perplexity, on a log axis turned upside down)
    against latency or size for each of its variants (rows with a `variant`: fp32 ◆, pruned ▲, healed ★, PTQ ■,
    QAT □, QAD ✶), a line from the variant each step started from, and the references (the teacher, the run as
    trained, scratch students) as circles."""
    fig = go.Figure()
    lm = any(r.get("test_ppl") is not None for r in rows)
    key, scale = ("test_ppl", 1.0) if lm else ("test_acc", 100.0)
    pts = [r for r in rows if r.get(x) is not None and r.get(key) is not None]

    def y(r):
        return scale * r[key]

    by_name = {r["variant"]: r for r in pts if r.get("variant")}
    refs = [r for r in pts if not r.get("variant")]
    run_row = next((r for r in refs if r["role"] != "teacher" and by_name and
                    r["run_id"] == next(iter(by_name.values()))["_parent"]), None)
    for name, r in by_name.items():  # each variant joined to the one its last step started from
        parent = by_name.get(name.rsplit("+", 1)[0]) if "+" in name else (by_name.get("onnx-fp32")
                                                                         if name != "onnx-fp32" else run_row)
        if parent is not None:
            fig.add_scatter(x=[parent[x], r[x]], y=[y(parent), y(r)], mode="lines",
                            line=dict(color="#999", width=1), showlegend=False, hoverinfo="skip")
    hover_y = "ppl %{y:,.2f}" if lm else "acc %{y:.2f}%"
    for role in ("teacher", "scratch", "kd"):
        sel = [r for r in refs if r["role"] == role]
        if sel:
            fig.add_scatter(x=[r[x] for r in sel], y=[y(r) for r in sel], mode="markers", cliponaxis=False,  # legend:
                            name=ROLE_NAMES[role] + (" (as trained)" if role != "teacher" else ""),  # a label on
                            text=[ROLE_NAMES[role] for _ in sel],  # a point near 100% would be cut at the top
                            marker=dict(color=ROLE_COLORS[role], size=12, opacity=0.8, line=dict(width=1, color="white")),
                            hovertemplate="%{x:.4g}, " + hover_y + "<extra>%{text}</extra>")
    for kind, symbol in COMPRESS_SYMBOLS.items():
        sel = [r for n, r in by_name.items() if _compress_kind(n) == kind]
        if sel:
            bits = " int4" if sel[0]["variant"].endswith("int4") else " int8"
            name = {"fp32": "ONNX fp32", "prune": "pruned", "heal": "healed"}.get(kind, kind.upper() + bits)
            fig.add_scatter(x=[r[x] for r in sel], y=[y(r) for r in sel], mode="markers", name=name,
                            cliponaxis=False, customdata=[artifact_label(r["variant"]) for r in sel],
                            marker=dict(symbol=symbol, size=13, color=ROLE_COLORS.get(sel[0]["role"], TEACHER),
                                        line=dict(width=1, color="black")),
                            hovertemplate="%{customdata}<br>" + hover_y + "<br>" + AXES.get(x, x)
                                          + " %{x:.4g}<extra></extra>")
    fig.update_xaxes(title=AXES.get(x, x).replace("fp32 safetensors", "the artifact's files")
                     + (f" on {device}" if device else ""), type="log" if x == "size_mb" else "linear")
    if lm:
        fig.update_yaxes(title="test perplexity (log scale, lower is up)", type="log", autorange="reversed")
    else:
        fig.update_yaxes(title="test accuracy (%)", range=accuracy_range([y(r) for r in pts]))
    return _finish(fig, "What each compression step costs, and what it gives back",
                   "Up and to the left is better. Each variant is the artifact itself, run in ONNX Runtime on the test "
                   "set; grey lines join each variant to the one its step started from. PTQ quantizes after "
                   "training; QAT trains with the rounding on the labels; QAD trains with the rounding under the "
                   "teacher. Circles: the teacher and the students as trained, measured in PyTorch (where they were "
                   "timed).", height=460)


def confusion_matrices(matrices: dict[str, list[list[int]]], classes) -> go.Figure:
    """Row-normalised confusion matrices side by side (rows: true class, columns: predicted)."""
    names = list(matrices)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.08)
    labels = [str(c) for c in classes]
    for i, name in enumerate(names, start=1):
        cm = matrices[name]
        norm = [[v / max(1, sum(row)) for v in row] for row in cm]
        fig.add_heatmap(z=[[100 * v for v in row] for row in norm], x=labels, y=labels, colorscale="Blues",
                        zmin=0, zmax=100, showscale=(i == len(names)), customdata=cm,
                        colorbar=dict(title="% of row"),
                        hovertemplate="true %{y}<br>predicted %{x}<br>%{z:.1f}% (%{customdata} images)<extra></extra>",
                        row=1, col=i)
        fig.update_xaxes(title="predicted class", row=1, col=i)
        fig.update_yaxes(autorange="reversed", row=1, col=i)
    fig.update_yaxes(title="true class", row=1, col=1)
    return _finish(fig, "Confusion matrices on the test set",
                   "Each row is a true class, split by what the model predicted (% of that row): a strong "
                   "diagonal is good, and off-diagonal cells show which classes get confused.", height=420)


# ---------------------------------------------------------------------------
# sweeps

HEATMAP_VALUES = {  # value: (scale, cell format, colour-bar title, title, lower is better)
    "test_acc": (100.0, ".2f", "acc %", "Test accuracy (%)", False),
    "kd_gain": (100.0, "+.2f", "gain, pts", "KD gain over scratch (pts)", False),
    "test_ppl": (1.0, ",.1f", "ppl", "Test perplexity (lower is better)", True),
    "ppl_gain": (1.0, "+,.1f", "ppl below scratch", "Perplexity below the scratch twin's", False),
}


def sweep_heatmap(cells: list[dict], value: str = "test_acc") -> go.Figure:
    """A T × α grid of the mean of `value` over seeds (test_acc or kd_gain; a language model's test_ppl or
    ppl_gain, its scratch twin's perplexity minus its own), the spread on hover.

    `cells`: dicts with temperature, alpha, value, value_std and seeds (as from sweep.grid_table).
    """
    scale, fmt, bar, title, lower = HEATMAP_VALUES[value]
    temps = sorted({c["temperature"] for c in cells})
    alphas = sorted({c["alpha"] for c in cells})
    z, text, hover = [], [], []
    unit = "points" if value in ("test_acc", "kd_gain") else "perplexity"
    for a in alphas:
        zr, tr, hr = [], [], []
        for t in temps:
            c = next((c for c in cells if c["temperature"] == t and c["alpha"] == a), None)
            v = None if c is None else c.get(value)
            sd = None if c is None else c.get(value + "_std")
            n = 0 if c is None else c.get("seeds", 0)
            zr.append(None if v is None else scale * v)
            tr.append("" if v is None else f"{scale * v:{fmt}}")
            hr.append("not finished" if v is None else
                      f"{scale * v:{fmt}} ± {scale * (sd or 0):.2f} {unit} over {n} seed{'s' if n != 1 else ''}")
        z.append(zr)
        text.append(tr)
        hover.append(hr)
    is_gain = value in ("kd_gain", "ppl_gain")
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"{t:g}" for t in temps], y=[f"{a:g}" for a in alphas], text=text, texttemplate="%{text}",
        customdata=hover, hovertemplate="T = %{x}, α = %{y}<br>%{customdata}<extra></extra>",
        colorscale="RdBu" if is_gain else ("Viridis_r" if lower else "Viridis"), zmid=0 if is_gain else None,
        colorbar=dict(title=dict(text=bar, side="right"), thickness=12)))
    fig.update_xaxes(title="temperature T", type="category")
    fig.update_yaxes(title="α (KD weight)", type="category")
    cap = {"kd_gain": "Each cell: mean over seeds of KD accuracy minus its scratch twin's (same seed), in points; red "
                      "is a loss, blue a gain. Hover for the spread.",
           "ppl_gain": "Each cell: mean over seeds of the scratch twin's test perplexity minus the distilled "
                       "student's (same seed); blue: the teacher helped, red: it hurt. Hover for the spread.",
           "test_ppl": "Each cell: the mean test perplexity over seeds at that T and α (lower is better). Hover for "
                       "the spread and the seed count.",
           }.get(value, "Each cell: the mean test accuracy over seeds at that T and α. Hover for the spread and the "
                        "seed count.")
    fig = _finish(fig, title, cap, height=420)
    fig.update_layout(margin=dict(l=70, r=80))  # room for the α axis title and the colour bar's
    return fig


def parallel_coordinates(rows: list[dict], dims: list[tuple[str, str]] | None = None) -> go.Figure:
    """One line per run across hyperparameters and results, coloured by test accuracy (a language model's: test
    perplexity)."""
    lm = any(r.get("test_ppl") is not None for r in rows)
    key0, what = ("test_ppl", "test perplexity") if lm else ("test_acc", "test accuracy")
    dims = dims or [("temperature", "T"), ("alpha", "α"), ("seed", "seed"),
                    (key0, "test ppl" if lm else "test acc (%)"), ("agreement", "agreement (%)"), ("ece", "ECE")]
    usable = [r for r in rows if r.get(key0) is not None]
    scale = {"test_acc": 100, "agreement": 100}
    dimensions = []
    for key, label in dims:
        vals = [r.get(key) for r in usable]
        if all(v is None for v in vals):
            continue
        vals = [round((v if v is not None else 0) * scale.get(key, 1), 4) for v in vals]
        if key in ("temperature", "alpha", "seed") and len(set(vals)) == 1:
            continue  # one seed (or one T) is no axis: Plotly would draw it from −1 to 1
        dimensions.append(dict(label=label, values=vals, tickformat=".3~g"))
    return _parcoords(dimensions, [scale.get(key0, 1) * r[key0] for r in usable], "ppl" if lm else "acc %",
                      "Hyperparameters and results, one line per run",
                      "Each line is a run, passing through its hyperparameters and results; drag along an axis "
                      f"to filter. Colour is {what}.", height=460)


def _parcoords(dimensions: list[dict], color: list[float], color_title: str, title: str, caption_text: str,
               height: int) -> go.Figure:
    """Parallel coordinates coloured by an accuracy in %, with room above for the slanted axis labels."""
    fig = go.Figure(go.Parcoords(
        line=dict(color=color, colorscale="Viridis", showscale=True,
                  colorbar=dict(title=dict(text=color_title, side="right"), thickness=12)),
        dimensions=dimensions, labelangle=-20, labelside="top"))
    fig = _finish(fig, title, caption_text, height=height)
    fig.update_layout(margin=dict(t=110, l=60, r=60))
    return fig


def size_curves(cells: list[dict], x: str = "params") -> go.Figure:
    """Scratch and KD accuracy (mean ± std over seeds) against student size or latency."""
    fig = go.Figure()
    for role, color in (("scratch", SCRATCH), ("kd", KD)):
        sel = sorted((c for c in cells if c["role"] == role and c.get(x) is not None and c.get("test_acc") is not None),
                     key=lambda c: c[x])
        if not sel:
            continue
        fig.add_scatter(x=[c[x] for c in sel], y=[100 * c["test_acc"] for c in sel], mode="lines+markers",
                        name=ROLE_NAMES[role], line_color=color,
                        error_y=dict(type="data", array=[100 * (c.get("test_acc_std") or 0) for c in sel]),
                        text=[c["model"] for c in sel],
                        hovertemplate="%{text}<br>%{y:.2f}%<br>" + AXES.get(x, x) + " %{x:.4g}<extra></extra>")
    teachers = [c for c in cells if c["role"] == "teacher" and c.get("test_acc") is not None]
    if teachers:
        fig.add_hline(y=100 * teachers[0]["test_acc"], line_dash="dot", line_color=TEACHER,
                      annotation_text=f"teacher {teachers[0]['model']}", annotation_position="bottom right")
    fig.update_xaxes(title=AXES.get(x, x), type="log")
    fig.update_yaxes(title="test accuracy (%)")
    return _finish(fig, f"What distillation buys at each budget: accuracy against {AXES.get(x, x).split(' (')[0]}",
                   "Each point is a student size, trained from scratch (grey) and distilled (red) with the same "
                   "budget; error bars are the std over seeds. The gap between the lines is the KD gain.",
                   height=420)


# ---------------------------------------------------------------------------
# searches (trials as from search.trial_table: trial, run_id, state, values, val_acc, epochs)

def _trial_figure(trials: list[dict]) -> tuple[str, float, str, bool]:
    """(key, scale, name, lower is better) of what a search scored its trials on: validation accuracy in %, or a
    language model's validation perplexity."""
    if any(t.get("val_ppl") is not None for t in trials):
        return "val_ppl", 1.0, "validation perplexity", True
    return "val_acc", 100.0, "validation accuracy", False


def search_history(trials: list[dict]) -> go.Figure:
    """Optimisation history: each trial's best validation accuracy (perplexity) in the order it started, and the
    best so far."""
    key, scale, what, lower = _trial_figure(trials)
    unit = "" if lower else "%"
    fig = go.Figure()
    done = [t for t in trials if t.get(key) is not None]
    stopped = [t for t in done if t["state"] != "done"]
    finished = [t for t in done if t["state"] == "done"]
    for sel, name, color, symbol in ((finished, "trial (all epochs)", KD, "circle"),
                                     (stopped, "trial stopped early", SCRATCH, "x")):
        if sel:
            fig.add_scatter(x=[t["trial"] for t in sel], y=[scale * t[key] for t in sel], mode="markers",
                            name=name, marker=dict(color=color, symbol=symbol, size=10),
                            text=[format_values(t["values"]) + f"<br>{t['epochs']} epoch(s), {t['state']}" for t in sel],
                            hovertemplate="trial %{x}: %{y:.2f}" + unit + "<br>%{text}<extra></extra>")
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t["trial"]):
        best = t[key] if best is None else (min if lower else max)(best, t[key])
        xs.append(t["trial"])
        ys.append(scale * best)
    if xs:
        fig.add_scatter(x=xs, y=ys, mode="lines", line_shape="hv", name="best so far", line_color=TEACHER)
    fig.update_xaxes(title="trial", dtick=1, rangemode="tozero")
    if lower:
        fig.update_yaxes(title=f"best {what} (log scale, lower is better)", type="log")
    else:
        fig.update_yaxes(title=f"best {what} (%)", range=accuracy_range([scale * t[key] for t in done]))
    return _finish(fig, f"Search history: {what} per trial",
                   f"Each point is a trial's best {what} (crosses: stopped early by the scheduler, or "
                   "cancelled); the line is the best found so far. The test set is not used to choose.", height=400)


def search_importances(importances: dict[str, float]) -> go.Figure:
    """Parameter importances (Optuna's) as horizontal bars."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h", marker_color=TEACHER,
                           hovertemplate="%{y}: %{x:.2f}<extra></extra>"))
    fig.update_xaxes(title="importance (share of the variance of the validation score)", range=[0, 1])
    fig.update_yaxes(title="parameter")
    return _finish(fig, "Which parameters mattered",
                   "Optuna's importance of each searched parameter for the validation score (accuracy, or minus "
                   "the perplexity of a language model) over the finished trials "
                   "(fANOVA); the shares add up to 1. With few trials, read it as a hint.",
                   height=120 + 50 * max(1, len(items)))


def search_parallel(trials: list[dict]) -> go.Figure:
    """One line per trial across the searched parameters and its validation accuracy (perplexity)."""
    key, scale, what, lower = _trial_figure(trials)
    done = [t for t in trials if t.get(key) is not None]
    names = sorted({k for t in done for k in t["values"]})
    dims = [dict(label=n, values=[t["values"].get(n) for t in done], tickformat=".3~g") for n in names]
    label = "val ppl" if lower else "val acc (%)"
    dims.append(dict(label=label, values=[round(scale * t[key], 3) for t in done], tickformat=".3~g"))
    return _parcoords(dims, [scale * t[key] for t in done], "val ppl" if lower else "val %",
                      f"Searched values and {what}, one line per trial",
                      f"Each line is a trial through its sampled values to its best {what}; drag along "
                      f"an axis to filter. Colour is {what}.", height=420)
