"""What each field of a run's files holds, so that the run store reads every field it knows by its type.

A field of another type (``"created": "yesterday"``, ``"accuracy": "0.9"``, ``"group": ["x"]``) makes the run
**unreadable: field F holds a str, not a number (path)**, as a truncated file does; the other runs are untouched.
A field that is absent is fine (older runs lack some); a field not listed here is not checked, and no reader
relies on its type. Types: ``num`` (int or float, not bool; NaN and infinity allowed, as JSON writes them),
``int``, ``str``, ``bool``, ``dict``, ``list``, ``nums`` (a list of numbers), ``matrix`` (a list of lists of
numbers); a trailing ``?`` also allows null; a nested dict is checked field by field.

>>> problem_in({"created": "yesterday"}, CONFIG)
'field created holds a str, not a number'
>>> problem_in({"test": {"accuracy": 0.9, "per_class_accuracy": [1, "x"]}}, SUMMARY)
'field test.per_class_accuracy holds a list with a str, not a list of numbers'
>>> problem_in({"group": None, "seed": 3}, CONFIG) is None
True
"""

from __future__ import annotations

_NAMES = {"num": "a number", "int": "a whole number", "str": "text", "bool": "true or false", "dict": "an object",
          "list": "a list", "nums": "a list of numbers", "matrix": "a list of lists of numbers"}

MODEL = {"family": "str", "name": "str?", "depth": "int?", "width": "num?", "pretrained": "bool", "heads": "int?"}

CONFIG = {
    "schema_version": "int", "run_id": "str", "created": "num", "kind": "str", "dataset": "str", "task": "str?",
    "group": "str?", "model": MODEL, "model_label": "str", "teacher": "str?", "method": "str?",
    "method_label": "str?", "method_params": "dict", "method_temperature": "num?", "method_weight": "num?",
    "objective": "str?", "command": "str?", "seed": "int", "labels": "num?", "epochs": "int", "batch_size": "int",
    "lr": "num", "weight_decay": "num", "grad_clip": "num?", "optimizer": "str", "augment": "str", "device": "str",
    "amp": "bool",
    "compile": "bool", "teacher_cache": "bool", "profile": "bool", "trust_factory": "bool", "allow_outside": "bool",
    "data_dir": "str?", "label_column": "str?", "init": "str?", "tokenizer": "str?", "stream": "bool?",
    "image_size": "int?", "channels": "int?", "max_length": "int?", "seq_len": "int?", "train_tokens": "int?",
    "val_tokens": "int?", "topk": "int?", "nproc": "int", "nnodes": "str?", "rdzv_endpoint": "str?",
    "rdzv_id": "str?", "track": "list", "teacher_weights": "nums?", "keep_layers": "nums?",
}

STATUS = {
    "state": "str", "created": "num?", "updated": "num?", "started": "num?", "finished": "num?", "host": "str?",
    "pid": "int?", "pid_started": "num?", "error": "str?", "worker": "int?", "resume": "bool?",
    "progress": {"epoch": "int?", "epochs": "int?", "step": "int?", "total_steps": "int?", "fraction": "num?",
                 "stage": "str?", "stage_fraction": "num?", "stage_eta_s": "num?", "device": "str?"},
}

TEST = {"accuracy": "num?", "agreement": "num?", "ece": "num?", "kl_to_teacher": "num?", "loss": "num?",
        "perplexity": "num?", "nll": "num?", "teacher_perplexity": "num?", "tokens": "int?", "tokens_per_s": "num?",
        "per_class_accuracy": "nums?", "confusion_matrix": "matrix?"}
PROFILE = {"latency_ms": "num?", "throughput": "num?", "params": "int?", "size_bytes": "int?", "size_mb": "num?",
           "flops": "num?", "threads": "int?", "cpu_busy_elsewhere": "num?", "device": "str?",
           "device_name": "str?", "dtype": "str?", "ms_per_token": "num?", "tokens_per_s": "num?"}
SUMMARY = {
    "kind": "str?", "task": "str?", "dataset": "str?", "device": "str?", "augment": "str?", "model": MODEL,
    "model_label": "str?", "best_epoch": "int?", "epochs_done": "int?", "val_acc_best": "num?",
    "val_ppl_best": "num?", "train_s": "num?", "setup_s": "num?", "visible_labels": "int?", "input_shape": "nums?",
    "diverged": "str?", "init": "dict?", "generations_error": "str?", "generations": "list?", "steps": "int?",
    "did_not_learn": "str?", "baselines": {"unigram_perplexity": "num?", "uniform_perplexity": "num?"},
    "test": TEST, "test_last": TEST, "profile": PROFILE,
    "method": {"name": "str?", "title": "str?", "objective": "str?", "citation": "str?", "params": "dict?"},
    "teacher": {"spec": "str?", "source": "str?", "label": "str?", "digest": "str?", "params": "int?",
                "model": "dict?", "test": TEST, "profile": PROFILE},
}

METRICS_ROW = {"epoch": "int", "step": "int?", "lr": "num?", "train_loss": "num?", "train_acc": "num?",
               "val_loss": "num?", "val_acc": "num?", "val_agreement": "num?", "val_ppl": "num?",
               "epoch_s": "num?", "train_s": "num?", "best_epoch": "int?"}

FILES = {"config.json": CONFIG, "status.json": STATUS, "summary.json": SUMMARY}


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fits(value, kind: str) -> str | None:
    """None if `value` is of `kind`, else what it holds instead."""
    if kind.endswith("?"):
        if value is None:
            return None
        kind = kind[:-1]
    ok = {"num": _is_num, "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
          "dict": lambda v: isinstance(v, dict), "list": lambda v: isinstance(v, list),
          "nums": lambda v: isinstance(v, list), "matrix": lambda v: isinstance(v, list)}[kind]
    if not ok(value):
        return f"a {type(value).__name__}"
    if kind == "nums":
        bad = [x for x in value if not _is_num(x)]
        if bad:
            return f"a list with a {type(bad[0]).__name__}"
    if kind == "matrix":
        for row in value:
            if not isinstance(row, list) or not all(_is_num(x) for x in row):
                return "a list with a row that is not numbers"
    return None


def problem_in(obj: dict, schema: dict, prefix: str = "") -> str | None:
    """The first field of `obj` whose value does not fit `schema` ("field test.accuracy holds a str, not a
    number"), or None."""
    for key, kind in schema.items():
        if key not in obj:
            continue
        value, name = obj[key], prefix + key
        if isinstance(kind, dict):
            if value is None:
                continue
            if not isinstance(value, dict):
                return f"field {name} holds a {type(value).__name__}, not an object"
            inner = problem_in(value, kind, name + ".")
            if inner:
                return inner
            continue
        wrong = _fits(value, kind)
        if wrong:
            return f"field {name} holds {wrong}, not {_NAMES[kind.rstrip('?')]}"
    return None
