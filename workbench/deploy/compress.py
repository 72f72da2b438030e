"""One compression pipeline over a finished run: prune → heal → quantize, every step measured as deployed.

    kdw compress RUN --steps prune:0.5,heal:kd,ptq:int8,qat:int8,qad:int8

A pipeline is a short list of steps. Each step makes a *variant* under the run (``runs/RUN/variants/NAME/``),
exported as ONNX and measured by running that artifact in ONNX Runtime on the test set (`export.measure`): accuracy,
agreement with the teacher, size on disk, latency and throughput. A variant's name is the path of steps that made
it, so two pipelines that share a beginning share its variants, and a pipeline started again after a kill goes on
from the step it reached:

    onnx-fp32                         the run's student as it is (the pipeline's first row)
    prune50                           50% of each layer's channels removed by L2 magnitude (torch-pruning)
    prune50+heal-kd                   then distilled again from the run's teacher (heal:ce: cross-entropy alone)
    prune50+heal-kd+ptq-int8          then quantized after training (ONNX Runtime, static int8, no training)
    prune50+heal-kd+qat-int8          or trained with int8 rounding in the forward pass, cross-entropy alone
    prune50+heal-kd+qad-int8          or trained with int8 rounding under the teacher (quantization-aware distillation)

A language-model run takes `heal:kd|ce` and the quantizing steps at `int4`: 4-bit weights in groups of 32 (ONNX
Runtime's MatMulNBits), for example `kdw compress RUN --steps ptq:int4,qat:int4,qad:int4`; it is cut when it is
trained (`--student-from-teacher --keep-top N`), not pruned here.

The quantizing steps are leaves: each starts from the float model the steps before it left, so `ptq`, `qat` and
`qad` side by side compare what a user could otherwise do with the same student. Their scheme is `deploy.qad`'s,
which is the one ONNX Runtime's quantizer applies to the exported model; each int8 variant records how far the
PyTorch fake-quantized forward is from its artifact (`fake_quant_check`).

Bad pipelines are refused before any work starts, with one sentence: an unknown step, a step after a quantizing
one, pruning a model that cannot be pruned, int4 for a model whose layers cannot take it, a run still training.
A step that fails marks its variant failed with the reason; the variants before it stay.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from workbench.deploy import qad
from workbench.deploy.export import (
    calibration_images,
    export_busy,
    export_lock,
    export_onnx,
    exportable,
    int8_settings,
    measure,
    measure_lm,
    ort_logits,
    ort_session,
    prune_model,
    quantize_int4,
    quantize_int8,
    require,
    set_variant_status,
    start_variants,
    teacher_test_logits,
    variant_state,
)
from workbench.errors import DeployError, friendly_error
from workbench.io import atomic_write_json
from workbench.models.zoo import count_params
from workbench.store.runs import Run, RunStore, same_process
from workbench.tasks import task_for
from workbench.train.loop import TrainConfig, train

STEPS = {  # kind: (what its argument is, what it does)
    "prune": ("a fraction in (0, 1)", "remove that fraction of each layer's channels by L2 magnitude"),
    "heal": ("kd or ce", "train the smaller student again: from the run's teacher with its method (kd), or from the "
                         "labels alone (ce)"),
    "ptq": ("int8 or int4", "quantize with ONNX Runtime after training (no training)"),
    "qat": ("int8 or int4", "train with the rounding in the forward pass, cross-entropy alone"),
    "qad": ("int8 or int4", "train with the rounding in the forward pass under the teacher (quantization-aware "
                            "distillation)"),
}
QUANTIZING = ("ptq", "qat", "qad")
RESUME_WEIGHTS = "student.safetensors"  # a float step's weights, for a pipeline that goes on after a kill
FAKE_QUANT_TOLERANCE = 0.01  # mean |fake-quant − artifact| at most this fraction of the largest |logit|: a rounding
# boundary that float sums cross differently moves a few activations by one step, never the model


@dataclass(frozen=True)
class Step:
    kind: str
    arg: str

    @property
    def name(self) -> str:
        """The step's part of a variant name: prune50, heal-kd, qad-int8."""
        if self.kind == "prune":
            return f"prune{round(100 * float(self.arg))}"
        return f"{self.kind}-{self.arg}"

    def __str__(self) -> str:
        return f"{self.kind}:{self.arg}"


@dataclass(frozen=True)
class CompressOptions:
    epochs: int = 3  # epochs of each training step (heal, qat, qad)
    heal_lr_scale: float = 0.3  # a healing step's peak learning rate, as a fraction of the run's
    quant_lr_scale: float = 0.1  # a quantization-aware step's, as a fraction of the run's
    calibration: int = 512  # training samples that calibrate the int8 activation ranges (ONNX Runtime's and ours)
    int8_format: str = "auto"  # export.int8_settings: by this CPU
    seed: int | None = None  # the training steps' seed (None: the run's)

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"compress trains each step for at least 1 epoch, got {self.epochs}")
        for name in ("heal_lr_scale", "quant_lr_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def parse_steps(text: str) -> list[Step]:
    """`prune:0.5,heal:kd,qad:int8` (commas, spaces, `->` or `→` between steps) as Steps, or ValueError naming the
    first bad one. The order is checked here: nothing but another quantizing step follows a quantizing one."""
    parts = [p for p in re.split(r"\s*(?:,|->|→|\s)\s*", text.strip()) if p]
    if not parts:
        raise ValueError("give at least one step, for example --steps prune:0.5,heal:kd,qad:int8")
    steps = []
    for part in parts:
        kind, _, arg = part.partition(":")
        kind, arg = kind.strip().lower(), arg.strip().lower()
        if kind not in STEPS:
            raise ValueError(f"unknown step {part!r}; the steps are "
                             + "; ".join(f"{k}:{a} ({what})" for k, (a, what) in STEPS.items()))
        if kind == "prune":
            try:
                fraction = float(arg)
            except ValueError:
                fraction = None
            if fraction is None or not 0 < fraction < 1:
                raise ValueError(f"{part!r}: prune takes a fraction in (0, 1), for example prune:0.5")
            arg = f"{fraction:g}"
        elif kind == "heal" and arg not in ("kd", "ce"):
            raise ValueError(f"{part!r}: heal takes kd (from the run's teacher) or ce (from the labels alone)")
        elif kind in QUANTIZING and arg not in ("int8", "int4"):
            raise ValueError(f"{part!r}: {kind} takes int8 (classifiers) or int4 (language models' weights)")
        if steps and steps[-1].kind in QUANTIZING and kind not in QUANTIZING:
            raise ValueError(f"{part!r} cannot follow {steps[-1]}: a quantizing step makes the deployed artifact; put "
                             f"{kind} before it (quantizing steps are leaves, each from the float model before them)")
        step = Step(kind, arg)
        if step in steps:
            raise ValueError(f"{part!r} appears twice")
        steps.append(step)
    return steps


def plan(steps: list[Step]) -> list[tuple[Step | None, str]]:
    """(step, variant name) in the order they are made, the starting point first: onnx-fp32, then each float step's
    path, then each quantizing leaf from the last float path."""
    out, path = [(None, "onnx-fp32")], []
    for step in steps:
        name = "+".join([*path, step.name])
        out.append((step, name))
        if step.kind not in QUANTIZING:
            path.append(step.name)
    return out


def check_compress(run: Run, steps: list[Step]) -> None:
    """DeployError (or ValueError) before any work, if the run cannot go through these steps."""
    exportable(run)
    task = task_for(run.config["dataset"], run.config.get("task"))
    widths = {s.arg for s in steps if s.kind in QUANTIZING}
    if task.token_level and "int8" in widths:
        raise DeployError("a language model is quantized to 4-bit weights here (MatMulNBits): use int4 instead of "
                          "int8")
    if not task.token_level and "int4" in widths:
        raise DeployError(f"4-bit weights are for language models' linear layers; quantize a "
                          f"{task.title.lower()} run to int8")
    if task.token_level and any(s.kind == "prune" for s in steps):
        raise DeployError("a language model is not channel-pruned here; cut it when it is trained (kdw distill "
                          "--student-from-teacher --keep-top N), then compress the run")
    if any(s.kind == "prune" for s in steps) and not task.prunable:
        raise DeployError(f"pruning is for image and table models, not a {task.title.lower()} run; drop prune from "
                          "the steps")
    wants_teacher = [str(s) for s in steps if s.kind == "qad" or (s.kind == "heal" and s.arg == "kd")]
    if wants_teacher and not run.config.get("teacher"):
        raise DeployError(f"{', '.join(wants_teacher)} distil from the run's teacher, and run {run.run_id} has none "
                          "(a teacher run): use heal:ce or qat:int8")
    for mod in ("onnx", "onnxscript", "onnxruntime") + (("torch_pruning",) if any(s.kind == "prune" for s in steps)
                                                        else ()):
        require(mod)
    if "int4" in widths:
        problem = qad.int4_problem(run.load_model("best"))
        if problem:
            raise DeployError(f"4-bit weights cannot be used for run {run.run_id}: {problem}")


def compress_args(steps: list[Step], options: CompressOptions) -> list[str]:
    """The `kdw compress` options that run this pipeline (for a background job)."""
    args = ["--steps", ",".join(map(str, steps)), "--epochs", str(options.epochs),
            "--calibration", str(options.calibration), "--int8-format", options.int8_format]
    if options.seed is not None:
        args += ["--seed", str(options.seed)]
    return args


def compress_run(run: Run, store: RunStore, steps: list[Step], options: CompressOptions = CompressOptions(),
                 progress=None, command: str = "") -> list[dict]:
    """Make every variant of the pipeline under `run`, each measured; returns their metrics in order.

    A variant already done with the same steps (a pipeline run again, or one that shares a beginning) is kept, and
    a float step's weights are read back from it; the work goes on from the first step that is not done.
    `progress(name, text, fraction)` is told what is happening.
    """
    check_compress(run, steps)
    say = progress or (lambda *a: None)
    if export_busy(run):
        say("compress", "waiting for the export of this run that is already running", 0.0)
    with export_lock(run):
        return _Pipeline(run, store, steps, options, say, command).run()


class _Pipeline:
    def __init__(self, run: Run, store: RunStore, steps: list[Step], options: CompressOptions, say, command: str):
        self.run_, self.store, self.steps, self.options, self.say = run, store, steps, options, say
        self.plan = plan(steps)
        config = run.config
        self.task = task_for(config["dataset"], config.get("task"))
        self.model = run.load_model("best").float().eval()
        source = self.task.load_run_data(config, self.model)
        self.dataset = self.task.view_for(source, self.model)
        self.teacher_logits = None if self.task.token_level else teacher_test_logits(run, store, source)
        self.measure = measure_lm if self.task.token_level else measure
        needs_calibration = any(s.kind in QUANTIZING and s.arg == "int8" for s in steps)
        self.calibration = calibration_images(self.dataset, options.calibration, 0) if needs_calibration else None
        self.int8 = int8_settings(options.int8_format)
        self.base = {"run_id": run.run_id, "command": command, "pipeline": ",".join(map(str, steps))}
        self.results: list[dict] = []
        for _, name in self.plan:
            if not self._done(name):
                set_variant_status(self.folder(name), "queued")

    def folder(self, name: str) -> Path:
        return self.run_.variants_path / name

    def _done(self, name: str) -> bool:
        return variant_state(self.folder(name)) == "done"

    def _cancelled(self, name: str) -> bool:
        return variant_state(self.folder(name)) == "cancelled"

    def run(self) -> list[dict]:
        model = self.model
        for i, (step, name) in enumerate(self.plan):
            fraction = i / len(self.plan)
            folder = self.folder(name)
            if self._done(name) and (step is None or step.kind in QUANTIZING or step.kind == "prune"
                                     or (folder / RESUME_WEIGHTS).is_file()):
                self.say(name, "done before; kept", fraction)
                if step is not None and step.kind == "prune":
                    model = prune_model(model, self.dataset.input_shape, float(step.arg))
                elif step is not None and step.kind == "heal":
                    model = self._load_weights(model, folder)
                self.results.append(json.loads((folder / "metrics.json").read_text()))
                continue
            shutil.rmtree(folder, ignore_errors=True)
            set_variant_status(folder, "running", progress={"text": self._doing(step), "fraction": fraction})
            self.say(name, self._doing(step), fraction)
            try:
                model = self._make(step, name, model, folder, fraction)
            except BaseException as e:  # a cancel (SIGTERM) too: the variants before this one stay
                if not self._cancelled(name):
                    set_variant_status(folder, "failed", error=f"step {step or 'export'} failed: {friendly_error(e)}")
                for _, later in self.plan[i + 1:]:
                    if not self._done(later) and not self._cancelled(later):
                        set_variant_status(self.folder(later), "failed", error=f"not made: step {step or 'export'} "
                                                                               "failed before it")
                raise
        return self.results

    @staticmethod
    def _doing(step: Step | None) -> str:
        if step is None:
            return "exporting the run's student"
        return {"prune": "pruning", "heal": f"healing ({step.arg})", "ptq": f"quantizing to {step.arg} (no training)",
                "qat": f"training with {step.arg} rounding (cross-entropy)",
                "qad": f"training with {step.arg} rounding under the teacher"}[step.kind]

    def _load_weights(self, model: nn.Module, folder: Path) -> nn.Module:
        load_model(model, str(folder / RESUME_WEIGHTS))
        return model.eval()

    def _make(self, step: Step | None, name: str, model: nn.Module, folder: Path, fraction: float) -> nn.Module:
        """Make one variant; returns the float model the next float step starts from."""
        extra: dict = {"step": str(step) if step else None, "started": time.time()}
        if step is None:
            export_onnx(model, self.dataset.input_shape, folder, self.task)
            self._write(name, folder, model, {"precision": "fp32", "quantization": None, **extra})
            return model
        if step.kind == "prune":
            before = count_params(model)
            model = prune_model(model, self.dataset.input_shape, float(step.arg))
            extra.update(pruned_fraction=float(step.arg), params_before=before, params_after=count_params(model))
            export_onnx(model, self.dataset.input_shape, folder, self.task)
            self._write(name, folder, model, {"precision": "fp32", "quantization": None, **extra})
            return model
        if step.kind == "heal":
            model, extra["training"] = self._train(model, step.arg == "kd", self.options.heal_lr_scale)
            save_model(model, str(folder / RESUME_WEIGHTS))  # tied weights (a language model's head) stored once
            export_onnx(model, self.dataset.input_shape, folder, self.task)
            self._write(name, folder, model, {"precision": "fp32", "quantization": None, **extra})
            return model
        self._quantize(step, name, model, folder, extra)
        return model  # a leaf: the next quantizing step starts from the same float model

    def _train(self, student: nn.Module, distil: bool, lr_scale: float) -> tuple[nn.Module, dict]:
        """Train `student` for the pipeline's epochs: `distil`, from the run's teacher with the run's own method (a
        run that did not distil: kd with its defaults); else from the labels alone (ce). Returns (the best
        validation epoch's model, a record of the training)."""
        run_cfg = TrainConfig.from_dict(self.run_.config)
        if distil:
            cfg = run_cfg if run_cfg.kind == "kd" else replace(run_cfg, kind="kd", method="kd", method_params={})
        else:
            cfg = replace(run_cfg, kind="scratch", method="ce", method_params={})
        cfg = replace(cfg, epochs=self.options.epochs, lr=run_cfg.lr * lr_scale, profile=False, group=None,
                      compile=False, amp=False, nproc=1, init=None,
                      seed=run_cfg.seed if self.options.seed is None else self.options.seed,
                      device="cpu" if run_cfg.device == "auto" else run_cfg.device)
        summary = train(cfg, store=self.store, dataset=self.dataset, student=student)
        trained = summary["_model"].float().cpu().eval()
        record = {"method": cfg.method, "objective": summary["method"]["objective"], "epochs": cfg.epochs,
                  "lr": cfg.lr, "seed": cfg.seed, "best_epoch": summary.get("best_epoch"),
                  "test_pytorch": {k: v for k, v in (summary.get("test") or {}).items()
                                   if k in ("accuracy", "perplexity")}}
        return trained, record

    def _quantize(self, step: Step, name: str, model: nn.Module, folder: Path, extra: dict) -> None:
        """A quantizing leaf: ptq quantizes `model` as it is; qat and qad train a fake-quantized copy first. The
        artifact is ONNX Runtime's quantization of the float weights (static int8, or 4-bit MatMulNBits weights), with
        the scheme the training saw."""
        int4 = step.arg == "int4"
        inputs = (lambda b: self.task.export_inputs(model, b))
        if int4:
            prepared = qad.prepare_int4(model)
        else:
            prepared = qad.calibrate(qad.prepare(model, self.int8), self.calibration, inputs)
        if step.kind != "ptq":
            prepared, extra["training"] = self._train(prepared, step.kind == "qad", self.options.quant_lr_scale)
        if not int4:
            prepared = qad.calibrate(prepared, self.calibration, inputs)
        float_model = qad.strip(prepared)
        staging = folder / ".fp32"
        export_onnx(float_model, self.dataset.input_shape, staging, self.task)
        if int4:
            _, done = quantize_int4(staging / "model.onnx", folder, float_output=bool(qad.tied_linears(model)),
                                    expect=qad.int4_layers(prepared))
            extra.update(precision="int4", quantization=done["mode"], notes=[])
        else:
            _, done = quantize_int8(staging / "model.onnx", folder, self.calibration, self.options.int8_format,
                                    matched=True, inputs=lambda b: self.task.export_inputs(float_model, b))
            extra.update(precision="int8", quantization=done["mode"], int8=done["int8"], notes=done["notes"])
        shutil.rmtree(staging, ignore_errors=True)
        extra["fake_quant_check"] = self._fake_quant_check(prepared, folder, float_model)
        self._write(name, folder, float_model, extra)

    def _fake_quant_check(self, prepared: nn.Module, folder: Path, float_model: nn.Module) -> dict:
        """How far the fake-quantized PyTorch forward (what training saw) is from the artifact, on the test set
        (every next-token position of the test blocks, for a language model)."""
        session = ort_session(folder / "model.onnx")
        prepared = prepared.eval()
        if self.task.token_level:
            x = self.dataset.x_test[:, :-1]
            art = torch.cat([torch.from_numpy(session.run(None, {"input_ids": x[i:i + 8].numpy()})[0]).float()
                             for i in range(0, len(x), 8)])
            art = art.reshape(-1, art.shape[-1])  # (positions, vocabulary)
            with torch.inference_mode():
                fq = torch.cat([prepared(x[i:i + 8]).float() for i in range(0, len(x), 8)]).reshape(art.shape)
        else:
            x_test, _ = self.dataset.split("test")
            art = ort_logits(session, x_test, inputs=lambda b: self.task.export_inputs(float_model, b))
            with torch.inference_mode():
                fq = torch.cat([prepared(*self.task.export_inputs(float_model, x_test[i:i + 256]))
                                for i in range(0, len(x_test), 256)]).float()
        scale = max(art.abs().max().item(), 1e-12)
        diff = (fq - art).abs()
        return {"max_abs_logit_diff": diff.max().item(), "mean_abs_logit_diff": diff.mean().item(),
                "relative_mean": diff.mean().item() / scale, "tolerance": FAKE_QUANT_TOLERANCE,
                "ok": diff.mean().item() / scale <= FAKE_QUANT_TOLERANCE,
                "top1_agreement": (fq.argmax(1) == art.argmax(1)).float().mean().item(),
                "reference": "the fake-quantized PyTorch model the step trained, on the whole test set"}

    def _write(self, name: str, folder: Path, source: nn.Module, info: dict) -> None:
        self.say(name, "measuring with ONNX Runtime", None)
        metrics = {"variant": name, "format": "onnx", **info, **self.base, "created": time.time(),
                   **self.measure(folder, source, self.dataset, self.teacher_logits)}
        atomic_write_json(folder / "metrics.json", metrics)
        set_variant_status(folder, "done")
        self.results.append(metrics)


def start_compress(store: RunStore, run_id: str, steps: list[Step], options: CompressOptions) -> None:
    """`kdw compress RUN ...` as a detached process (the app's Compress view); progress lands in each variant's
    status.json under runs/RUN/variants/. Checked here first, so a bad pipeline is refused before it starts."""
    run = store.get(run_id)
    check_compress(run, steps)
    pending = [name for _, name in plan(steps) if variant_state(run.variants_path / name) != "done"]
    start_variants(store, run, "compress", compress_args(steps, options), pending, "compressing it")


def compress_busy(run: Run) -> bool:
    """Whether a pipeline (or an export) of this run is working now."""
    return export_busy(run) or any(v["state"] in ("queued", "running") for v in run.variants())


def cancel_compress(run: Run) -> str:
    """Stop the pipeline working on `run`: its process (and the process group it leads, started by
    `start_compress`) gets SIGTERM, and every variant it had not finished reads cancelled; the variants it finished
    stay. A pipeline started again goes on from the first step that is not done. Returns what happened."""
    pending = [v for v in run.variants() if v["state"] in ("queued", "running")]
    if not pending:
        return "nothing to cancel: no step of this run is queued or running"
    stopped = set()
    for v in pending:
        status = json.loads((v["folder"] / "status.json").read_text())
        pid = status.get("pid")
        if pid and pid not in stopped and same_process(status):
            try:
                if os.getpgid(pid) == pid:  # a detached pipeline leads its own group: its data workers stop too
                    os.killpg(pid, signal.SIGTERM)
                else:
                    os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError, OSError):
                pass
            stopped.add(pid)
        set_variant_status(v["folder"], "cancelled", error="cancelled before it finished; compress again to go on")
    return f"cancelled {len(pending)} step(s)" + (" and stopped the pipeline's process" if stopped else "")
