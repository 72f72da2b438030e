"""A language-model student as a Hugging Face folder: what transformers, vLLM and TGI load.

`export_hf` writes the run's best student with `save_pretrained` (safetensors) beside its tokenizer, under
`runs/RUN/variants/hf/`, then loads the folder back with transformers' own `AutoModelForCausalLM` and measures what
it loaded, as every variant is measured: its logits against the student's on the test blocks, its test perplexity,
agreement with the teacher, size on disk and tokens per second.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from workbench.data.text import require_transformers
from workbench.deploy.export import export_lock, set_variant_status
from workbench.errors import DeployError, friendly_error
from workbench.evaluate.metrics import token_profile
from workbench.io import atomic_write_json
from workbench.models.lm import CausalLM
from workbench.store.runs import Run, RunStore
from workbench.tasks import task_for
from workbench.tasks.lm import lm_metrics
from workbench.train.teachers import load_teacher, teacher_topk

HF_VARIANT = "hf"


def lm_student(run: Run, what: str, isnt: str = "is not one") -> CausalLM:
    """The finished run's best student, when it is a language model; DeployError in one sentence otherwise (`what`:
    the format's sentence, "--format hf writes language models (…)"; `isnt`: what a classifier is not)."""
    if run.state != "done":
        raise DeployError(f"run {run.run_id} is {run.state}; export a finished run")
    student = run.load_model("best")
    if not isinstance(student, CausalLM):
        label = student.kdw_config.label() if hasattr(student, "kdw_config") else type(student).__name__
        raise DeployError(f"{what}; {label} {isnt}: export it with --format onnx")
    return student


def write_and_measure(run: Run, store: RunStore, name: str, student: CausalLM, write, load, say,
                      annotate=None) -> dict:
    """The steps every file export of a language model shares: `write(folder)` into a temporary folder that then
    replaces runs/RUN/variants/NAME, `load(folder)` it back with the consumer's own loader (a transformers model),
    and measure what was loaded (`measure_hf`, updated by `annotate(metrics)` where given); the variant's status
    says running, done or failed with the reason."""
    folder = run.variants_path / name
    with export_lock(run):
        tmp = folder.with_name(f".{name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        set_variant_status(folder, "running", progress={"text": "loading it back and measuring it", "fraction": 0.4})
        try:
            loaded = CausalLM(load(folder).eval())
            for key in ("kdw_config", "kdw_input_shape", "kdw_num_classes", "kdw_vocab"):  # what the profile reads
                setattr(loaded, key, getattr(student, key))
            metrics = measure_hf(run, store, student, loaded, folder)
            metrics["variant"] = name
            metrics.update(annotate(metrics) if annotate else {})
            atomic_write_json(folder / "metrics.json", metrics)
        except Exception as e:
            set_variant_status(folder, "failed", error=friendly_error(e))
            raise
        set_variant_status(folder, "done")
    say("done", 1.0)
    return metrics


def export_hf(run: Run, store: RunStore, progress=None) -> dict:
    """Write `run`'s best student as a Hugging Face folder and measure it as loaded back; returns its metrics.
    DeployError in one sentence for a run that is not finished or a student with no Hugging Face form."""
    say = progress or (lambda text, fraction: None)
    student = lm_student(run, "--format hf writes language models (llama students, hf: models and students cut "
                              "from them)", "has no Hugging Face form")
    transformers = require_transformers()

    def write(tmp: Path) -> None:
        say("writing the Hugging Face folder (save_pretrained)", 0.1)
        student.hf.save_pretrained(str(tmp), safe_serialization=True)
        transformers.AutoTokenizer.from_pretrained(student.kdw_vocab["tokenizer"]).save_pretrained(str(tmp))

    def load(folder: Path):
        say("loading it back with AutoModelForCausalLM and measuring it", 0.4)
        return transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)

    return write_and_measure(run, store, HF_VARIANT, student, write, load, say)


def measure_hf(run: Run, store: RunStore, student: CausalLM, loaded: CausalLM, folder: Path) -> dict:
    """The loaded folder's figures: its logits against the student's on the test blocks, test perplexity (and
    agreement with the teacher, from its cached top k), size of every file, tokens per second."""
    task = task_for(run.config["dataset"], "language-modelling")
    data = task.load_run_data(run.config, student)
    cache = None
    if run.config.get("teacher"):
        teacher = load_teacher(run.config["teacher"], store)
        cache = teacher_topk(teacher, data, "test", int(run.config.get("topk") or task.default_topk),
                             store.cache_dir, "cpu")
    blocks = data.x_test[:8, :-1]
    with torch.inference_mode():
        a, b = student.eval()(blocks).float(), loaded(blocks).float()
    size = sum(p.stat().st_size for p in folder.iterdir()  # every file a deployment copies: weights, config, tokenizer
               if p.is_file() and p.name not in ("status.json", "metrics.json"))
    return {"variant": HF_VARIANT, "format": "Hugging Face folder (safetensors, fp32)", "folder": str(folder),
            "params": sum(p.numel() for p in loaded.parameters()), "size_bytes": size, "size_mb": size / 1e6,
            "check": {"max_abs_logit_diff": float((a - b).abs().max()),
                      "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
                      "loader": "transformers.AutoModelForCausalLM"},
            "test": lm_metrics(loaded, data.x_test, cache), "profile": token_profile(loaded, data, task, "cpu")}
