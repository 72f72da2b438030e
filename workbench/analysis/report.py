"""A self-contained HTML report of a comparison, to hand to people who were not in the room.

One file: the table, the plots (plotly.js is embedded, so it opens offline), each run's
config, the environment (torch version, device, threads) and the date.
"""

from __future__ import annotations

import errno
import html
import json
import platform
import time
from pathlib import Path

from workbench import __version__
from workbench.analysis import describe, plots
from workbench.analysis.compare import (
    AGREEMENT_MEANS,
    ECE_MEANS,
    Comparison,
    build_comparison,
    comparison_rows,
    generations,
    pipeline_table,
)
from workbench.errors import WorkbenchError
from workbench.io import atomic_write
from workbench.store.runs import Run, dig


class ReportError(WorkbenchError):
    """A report that could not be written, in one sentence."""


def environment() -> dict:
    import torch  # only when a report is written: importing this module stays torch-free

    from workbench.evaluate.metrics import device_name

    env = {"kd-workbench": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "cpu": device_name("cpu"), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["cuda device"] = torch.cuda.get_device_name(0)
    return env


def _table_html(comparison: Comparison) -> str:
    """A table; timings measured on a busy CPU are greyed (class `unreliable`)."""
    names = [name for name, _ in comparison.columns]
    head = "".join(f"<th>{html.escape(name)}</th>" for name in names)
    grey = set(comparison.greyed())

    def cell(i, name, text):
        attr = " class='unreliable'" if (i, name) in grey else ""
        return f"<td{attr}>{html.escape(str(text))}</td>"

    body = "".join("<tr class='role-" + html.escape(r["role"]) + "'>" +
                   "".join(cell(i, name, cells[name]) for name in names) + "</tr>"
                   for i, (r, cells) in enumerate(zip(comparison.shown, comparison.cells())))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_html(fig) -> str:
    return (f"<figure>{fig.to_html(full_html=False, include_plotlyjs=False)}"
            f"<figcaption>{html.escape(plots.caption(fig))}</figcaption></figure>")


def build_report(runs: list[Run], title: str = "KD Workbench report", classes=None) -> str:
    """The report as one HTML string."""
    from plotly.offline import get_plotlyjs

    usable, left_out = [], []
    for r in runs:
        state = r.state
        if state == "done" and (isinstance(dig(r.summary, "test", "confusion_matrix"), list)
                                or isinstance(dig(r.summary, "test", "perplexity"), (int, float))):
            usable.append(r)
        else:
            why = r.status().get("error") if state != "done" else "its summary.json is missing or incomplete"
            left_out.append(f"{r.run_id}: {state}" + (f" ({why})" if why else ""))
    runs = usable
    if not runs:
        raise ValueError("the report needs at least one finished run with a summary"
                         + (f"; left out: {'; '.join(left_out)}" if left_out else ""))
    summary = build_comparison(runs, aggregated=True)
    every = Comparison(runs, summary.rows, aggregated=False, wide=True)
    rows = summary.rows
    device = next((r["device"] for r in rows if r.get("device")), "cpu")
    figs = [plots.pareto(rows, "latency_ms", device), plots.pareto(rows, "size_mb")]
    figs.append(plots.training_curves(*describe.curve_series(runs)))
    cms = summary.confusion_matrices()
    if cms:
        k = len(next(iter(cms.values())))
        figs.append(plots.confusion_matrices(cms, classes or [str(i) for i in range(k)]))
    lm = any(r.get("test_ppl") is not None for r in rows)
    pipelines = _pipelines_html(runs)

    env = environment()
    def origin(r) -> str:
        """Where a run's weights started, and which of its layers were new (a replaced classifier)."""
        init = r.summary.get("init")
        if not isinstance(init, dict):
            return ""
        new = ", ".join(init.get("new_layers") or []) or "none"
        return (f"<p>Started from <code>{html.escape(str(init.get('source')))}</code> "
                f"({init.get('loaded')} tensors loaded); new layers: {html.escape(new)}.</p>")

    configs = "".join(
        f"<details><summary>{html.escape(r.run_id)} ({html.escape(str(r.config.get('kind')))}, "
        f"{html.escape(str(r.config.get('model_label')))})</summary>{origin(r)}<pre>"
        f"{html.escape(json.dumps(r.config, indent=2, sort_keys=True, default=str))}</pre></details>" for r in runs)
    gens = "".join(
        f"<h3><code>{html.escape(g['prompt'])}</code></h3><table>"
        + "".join(f"<tr><th>{html.escape(title)}</th><td style='text-align:left'>{html.escape(t['greedy'])}</td>"
                  f"<td style='text-align:left'>{html.escape(t['sampled'])}</td></tr>" for title, t in g["models"].items())
        + "</table>" for g in generations(runs))
    gens = ("<h2>Generations</h2><p>32 new tokens after each prompt: greedy, then sampled (T = 1, top 50, seeded), "
            "as each run stored them.</p>" + gens) if gens else ""
    env_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in env.items())
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    verdicts = "".join(f"<li>{html.escape(subject)}: {html.escape(verdict)}</li>"
                       for subject, verdict in summary.verdicts)
    line = summary.headline
    headline_html = f'<p class="headline">{html.escape(line)}</p>' if line else ""
    objectives = {}  # each distinct objective once, with the roles that used it
    for r in runs:
        text = r.config.get("objective") or r.summary.get("method", {}).get("objective") or ""
        if text:
            objectives.setdefault(text, set()).add(plots.ROLE_NAMES.get(r.config.get("kind"), "?"))
    objective_items = "".join(f"<li>{html.escape(', '.join(sorted(roles)))}: <code>{html.escape(text)}</code></li>"
                              for text, roles in objectives.items())
    warning = "".join(f'<p class="warning"><b>Warning:</b> {html.escape(w)}</p>'
                      for w in (summary.warning, summary.int8_warning) if w)
    if left_out:
        warning += ('<p class="warning"><b>Left out</b> (not finished, or unreadable): '
                    + html.escape("; ".join(left_out)) + "</p>")
    css = ("body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;"
           "color:#222;padding:0 1rem}table{border-collapse:collapse;font-size:.85rem;margin:1rem 0}"
           "th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:right}th{background:#f4f4f4}"
           "td:nth-child(-n+2){text-align:left}tr.role-teacher{background:#eef4fb}tr.role-kd{background:#fdf0f0}"
           "figure{margin:1.5rem 0}figcaption{color:#555;font-size:.9rem}code{background:#f4f4f4;padding:0 .3rem}"
           "pre{background:#f8f8f8;padding:.5rem;overflow:auto}"
           ".warning{background:#fff4e5;border-left:4px solid #f0a020;padding:.5rem .8rem}"
           ".headline{font-size:1.15rem;font-weight:600;margin:1rem 0 .3rem}.what{color:#555;margin:0 0 1rem}"
           "td.unreliable{color:#9a9a9a;font-style:italic}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{css}</style><script type="text/javascript">{get_plotlyjs()}</script></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Generated {date} by KD Workbench {__version__}. The objectives these runs trained with (in vanilla KD, α weights
the distillation term, so α = 0 is the scratch baseline):</p>
<ul>{objective_items}</ul>
{headline_html}
<p class="what">{html.escape(describe.describe_runs(runs))}</p>
<h2>Summary (mean ± std over seeds)</h2>
{_table_html(summary)}
<ul>{verdicts}</ul>
{_lm_means(device) if lm else _means(device)}
{warning}
<h2>Every run</h2>
{_table_html(every)}
<h2>Plots</h2>
{''.join(_figure_html(f) for f in figs)}
{pipelines}
{gens}
<h2>Configs</h2>
{configs}
<h2>Environment</h2>
<table>{env_rows}</table>
</body></html>
"""


def _pipelines_html(runs: list[Run]) -> str:
    """A section per run that went through `kdw compress`: its pipeline, its table and its plot."""
    parts = []
    for run in runs:
        rows = comparison_rows([run])
        steps = sorted({r["pipeline"] for r in rows if r.get("_parent") == run.run_id and r.get("pipeline")})
        if not steps:
            continue
        table = pipeline_table(run, rows)
        head = "".join(f"<th>{html.escape(k)}</th>" for k in table[0] if k != "variant")
        body = "".join("<tr>" + "".join(f"<td>{'' if v is None else html.escape(str(v))}</td>"
                                        for k, v in t.items() if k != "variant") + "</tr>" for t in table)
        parts.append(f"<h3>{html.escape(run.run_id)}: {html.escape(' | '.join(steps))}</h3>"
                     f"<table><tr>{head}</tr>{body}</table>"
                     + _figure_html(plots.compress_pareto(rows, "size_mb")))
    if not parts:
        return ""
    return ("<h2>Compression</h2><p>Each variant is the artifact itself (ONNX), run in ONNX Runtime on the test "
            "set. PTQ quantizes after training; QAT trains with int8 rounding on the labels; QAD trains with int8 "
            "rounding under the teacher. Trained = deployed: how often the fake-quantized model a step trained "
            "picks the same class as its int8 artifact.</p>" + "".join(parts))


def _means(device) -> str:
    return f"""<p>Test accuracy is the epoch with the best accuracy on the fixed validation split ("(last)", in the table
of every run, is the final epoch). KD gain is the distilled student's accuracy minus its scratch twin's (same student,
budget and seed), in points. Latency is the median of at least 30 batch-1 forward passes after 5 warm-ups, fp32
on {html.escape(str(device))}, each model timed once per comparison; throughput is at batch 256. FLOPs count a
multiply-add as 2. Size is the fp32 safetensors file (MB = 10⁶ bytes). {html.escape(AGREEMENT_MEANS)}
{html.escape(ECE_MEANS)}</p>"""


def _lm_means(device) -> str:
    return f"""<p>Test perplexity is exp of the mean next-token cross-entropy on the test split's tokens, of the
epoch with the lowest validation perplexity. "ppl vs scratch" is the distilled student's perplexity minus its scratch
twin's (same student, corpus and seed): below zero, the teacher helped. Agreement is how often the student's most
likely next token is the teacher's. Latency and tokens per second are fp32 forward passes over a block of tokens
(the table says its length) on {html.escape(str(device))}. Size is the fp32 safetensors file (MB = 10⁶ bytes).</p>"""


def write_report(runs: list[Run], path, title: str = "KD Workbench report", classes=None) -> int:
    """Write the report to `path` atomically (a temporary file beside it, then a rename): a full disk or a kill
    leaves the old report whole, or no file, never a truncated one. Returns its size in bytes; on a full disk
    ReportError says so in the report's words."""
    data = build_report(runs, title, classes).encode("utf-8")
    try:
        atomic_write(Path(path), data)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ReportError(f"disk full: the report ({len(data) / 1e6:.1f} MB) could not be written to {path}; "
                              "free some space, or write it elsewhere with -o, and export it again") from None
        raise
    return len(data)
