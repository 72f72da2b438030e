"""Words for stored runs: a run's title in legends, a line describing a set of runs, their curves and groups.

Reads run folders only (torch-free), so every view, the report included, names runs the same way.
"""

from __future__ import annotations

from workbench.analysis.format import ROLE_COLORS, ROLE_NAMES
from workbench.store.runs import Run, RunStore


def run_title(config: dict) -> str:
    """A short name for a run in legends: role, student, method and its temperature, seed."""
    kind = config.get("kind", "kd")
    parts = [ROLE_NAMES.get(kind, kind), config.get("model_label", "")]
    if kind == "kd":  # the method's own label, recorded with the run ("T=4 α=0.9", "dkd T=4")
        label = config.get("method_label")
        parts.append(label if isinstance(label, str) and label else f"[{config.get('method') or 'kd'}]")
    if config.get("seed") is not None:
        parts.append(f"seed {config['seed']}")
    return " ".join(x for x in parts if x)


def describe_runs(runs: list[Run]) -> str:
    """One line saying what a set of runs came from: data set, students, budget, labels and seeds."""
    cfgs = [r.config for r in runs if r.config]
    if not cfgs:
        return ""

    def one(key, fmt=str):
        values = list(dict.fromkeys(fmt(c.get(key)) for c in cfgs))
        return values[0] if len(values) == 1 else " / ".join(values[:4]) + (" …" if len(values) > 4 else "")

    seeds = sorted({c.get("seed") for c in cfgs if c.get("seed") is not None})
    labels = one("labels", lambda v: "all labels" if v is None else (f"{v:,} labels" if isinstance(v, int)
                                                                    else f"{100 * v:g}% of the labels"))
    students = one("model_label")
    epochs = one("epochs")
    return (f"{one('dataset')} · {students} · {epochs} epoch{'' if epochs == '1' else 's'} · {labels} · "
            f"seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds[:6]))}{' …' if len(seeds) > 6 else ''}")


def curve_series(runs: list[Run]) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """({label: per-epoch rows}, {label: role colour}) for the runs that have logged an epoch."""
    series, colors = {}, {}
    for r in runs:
        rows = r.metrics()
        if not rows:
            continue
        cfg = r.config
        label = run_title(cfg)
        if label in series:  # two runs that read the same: tell them apart by id
            label = f"{label} · {r.run_id}"
        series[label] = rows
        colors[label] = ROLE_COLORS.get(cfg.get("kind"), ROLE_COLORS["teacher"])
    return series, colors


def groups(store: RunStore, prefix: str | tuple[str, ...] | None = None) -> list[str]:
    """Group names in the store, oldest first, optionally only those starting with `prefix`."""
    out: list[str] = []
    for r in store.list():
        g = r.config.get("group")
        if g and g not in out and (prefix is None or g.startswith(prefix)):
            out.append(g)
    return out


def latest_group(store: RunStore, prefix: str | tuple[str, ...] | None = None) -> str | None:
    found = groups(store, prefix)
    return found[-1] if found else None


def did_not_learn(summary: dict, config: dict | None = None) -> str | None:
    """Why a finished run learned nothing useful, or None. A run's task may have recorded why in its summary (a
    language model no better than a unigram model, or far from its teacher). A classifier did not learn when its
    test accuracy is within a tenth of the way from chance (1/K) to perfect (and at least 2 points of chance), or
    when it predicts one class for (nearly) every test sample. With a hint at what to change.

    >>> did_not_learn({"test": {"accuracy": 0.1031, "per_class_accuracy": [1.0] + [0.0] * 9,
    ...                         "confusion_matrix": [[9, 0]] * 1 + [[9, 0]] * 9}})[:60]
    'test accuracy 10.31% is chance level for 10 classes (10.00%)'
    >>> did_not_learn({"test": {"accuracy": 0.1504, "per_class_accuracy": [0.15] * 10}})[:66]
    'test accuracy 15.04% is near chance level for 10 classes (10.00%):'
    >>> did_not_learn({"test": {"accuracy": 0.9, "per_class_accuracy": [0.9] * 10}}) is None
    True
    """
    if isinstance(summary, dict) and isinstance(summary.get("did_not_learn"), str):
        return summary["did_not_learn"]
    test = summary.get("test") if isinstance(summary, dict) else None
    if not isinstance(test, dict) or not isinstance(test.get("accuracy"), (int, float)):
        return None
    per_class = test.get("per_class_accuracy")
    k = len(per_class) if isinstance(per_class, list) and per_class else None
    if not k or k < 2:
        return None
    acc = float(test["accuracy"])
    chance = 1.0 / k
    why = None
    if acc <= chance + 0.02:
        why = f"test accuracy {100 * acc:.2f}% is chance level for {k} classes ({100 * chance:.2f}%)"
    elif acc <= chance + 0.1 * (1 - chance):
        why = f"test accuracy {100 * acc:.2f}% is near chance level for {k} classes ({100 * chance:.2f}%)"
    cm = test.get("confusion_matrix")
    if why is None and isinstance(cm, list) and cm and all(isinstance(r, list) for r in cm):
        columns = [sum(r[j] for r in cm if j < len(r)) for j in range(len(cm[0]))]
        total = sum(columns)
        if total and max(columns) >= 0.95 * total:
            why = f"it predicts one class for {100 * max(columns) / total:.0f}% of the test samples"
    if why is None:
        return None
    model = (config or {}).get("model") or {}
    hints = ["more epochs", "another learning rate"]
    if isinstance(model, dict) and model.get("family") in ("torchvision", "timm"):
        hints.append("a larger input size (ImageNet models expect 224 px and collapse on tiny images)")
    return f"{why}: try " + ", ".join(hints[:-1]) + f" or {hints[-1]}"
