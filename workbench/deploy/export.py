"""Deployment: a finished run's student as the artifact people ship, measured by running that artifact.

    kdw export RUN --format onnx                 # runs/RUN/variants/onnx-fp32/
    kdw export RUN --format onnx --int8          # and onnx-int8, quantized by ONNX Runtime
    kdw export RUN --format onnx --prune 0.5     # and pruned50-onnx-fp32: channels removed, then distilled again

A variant lives under its run, ``runs/<id>/variants/<name>/``: the files a deployment needs
(``model.onnx``, and ``model.onnx.data`` where the exporter writes the weights beside it), a
``status.json`` while it is being made, and a ``metrics.json`` whose every figure comes from running
the artifact itself in ONNX Runtime on the test set: accuracy, agreement with the teacher, ECE, the
size of all its files, latency at batch 1 and throughput at batch 256 with the same method, threads
and warm-up as the PyTorch figures, and PyTorch eager measured beside it in the same process.

- **ONNX**: `torch.onnx.export` with the dynamo exporter and a dynamic batch axis, checked against
  PyTorch on the whole test set (largest absolute logit difference, top-1 agreement).
- **int8**: ONNX Runtime's static quantization (QDQ, per-channel weights, calibrated on a seeded
  sample of training images) for models with convolutions; dynamic quantization for pure MLPs, where
  activations are quantized per batch at run time. The output names the mode used.
- **Pruning**: `torch-pruning` removes a fraction of each layer's channels (or units) by L2 magnitude,
  keeping the classifier's outputs; the smaller student is then fine-tuned for a few epochs with the
  run's own teacher and method (prune, then distil). Structured pruning makes the model smaller and
  faster; unstructured masks would not, so they are not offered.

onnx, onnxscript, onnxruntime and torch-pruning are an optional extra: ``pip install -e '.[deploy]'``.
"""

from __future__ import annotations

import copy
import importlib
import logging
import platform
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workbench.deploy.qad import INT4_GROUP, QUANTIZED_OPS
from workbench.errors import (
    DeployError,
    RunStoreError,
    friendly_error,
)
from workbench.evaluate.metrics import (
    OtherCpuLoad,
    device_name,
    flops_per_sample,
    predict_logits,
    time_calls,
    time_forward,
)
from workbench.io import atomic_write_json, read_json_object
from workbench.jobs.spawn import Command, spawn
from workbench.models.zoo import count_params
from workbench.store.runs import Run, RunStore, process_identity
from workbench.tasks import task_for
from workbench.train.loop import TrainConfig, train
from workbench.train.teachers import cached_logits, load_teacher

VARIANT_FILES = ("model.onnx", "model.onnx.data")  # what a deployment needs; metrics.json and status.json are ours
MIN_CALIBRATION = 16  # fewer images give activation ranges that depend on the draw more than on the data
SINGLE_FILE_LIMIT = 1_800_000_000  # weights above this go beside model.onnx (a protobuf holds at most 2 GB)
INT8_FORMATS = ("auto", "s8s8", "reduce-range", "u8u8")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # x86 instructions that multiply int8 without saturating
INT8_MIN_AGREEMENT = 0.98  # below this top-1 agreement with fp32 on the test set, an int8 variant is flagged


def require(module: str):
    """Import an optional dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DeployError(f"exporting needs the optional package {module.split('.')[0]!r}: "
                          "install it with pip install -e '.[deploy]' (or pip install 'kd-workbench[deploy]')") from None


@dataclass(frozen=True)
class ExportOptions:
    int8: bool = False  # also an int8 variant (ONNX Runtime quantization)
    prune: float | None = None  # fraction of channels to remove, in (0, 1); then fine-tune with the teacher
    calibration: int = 512  # training images that calibrate static int8 activation ranges
    finetune_epochs: int = 3  # epochs of distillation after pruning
    finetune_lr_scale: float = 0.3  # the fine-tune's peak learning rate, as a fraction of the run's
    seed: int = 0  # the calibration sample
    int8_format: str = "auto"  # auto (by this CPU: reduce-range on x86 without VNNI, else s8s8) | s8s8 | reduce-range | u8u8

    def __post_init__(self):
        if self.int8_format not in INT8_FORMATS:
            raise ValueError(f"the int8 format must be one of {', '.join(INT8_FORMATS)}, got {self.int8_format!r}")
        if self.prune is not None and not 0 < self.prune < 1:
            raise ValueError(f"the pruning fraction must be in (0, 1), got {self.prune}")
        if self.calibration < MIN_CALIBRATION:
            raise ValueError(f"int8 calibration needs at least {MIN_CALIBRATION} images, got {self.calibration}")
        if self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")

    def variant_names(self) -> list[str]:
        """The variants these options make, in the order of the Pareto chains: fp32, int8, pruned."""
        names = ["onnx-fp32"] + (["onnx-int8"] if self.int8 else [])
        if self.prune is not None:
            tag = f"pruned{round(100 * self.prune)}"
            names += [f"{tag}-onnx-fp32"] + ([f"{tag}-onnx-int8"] if self.int8 else [])
        return names


# ---------------------------------------------------------------------------
# the variant store

def set_variant_status(folder: Path, state: str, identity: dict | None = None, **fields) -> None:
    """A variant's status.json. While it is queued or running it names the export process (pid, start time, host;
    this process unless `identity` says another), so that a killed export reads failed (`Run.variants`)."""
    folder.mkdir(parents=True, exist_ok=True)
    who = (identity or process_identity()) if state in ("queued", "running") else {}
    atomic_write_json(folder / "status.json", {"state": state, "updated": time.time(), **who, **fields},
                      in_place_when_full=state in ("done", "failed"))


def export_lock(run: Run):
    """The lock that serialises the exports of one run (`filelock`, held while `export_run` works)."""
    from filelock import FileLock

    run.variants_path.mkdir(parents=True, exist_ok=True)
    return FileLock(str(run.variants_path / ".export.lock"))


def export_busy(run: Run) -> bool:
    """Whether an export of this run holds its lock now."""
    from filelock import Timeout

    lock = export_lock(run)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def artifact_files(folder: Path) -> dict[str, int]:
    """{file name: bytes} of the files a deployment of this variant needs."""
    return {n: (folder / n).stat().st_size for n in VARIANT_FILES if (folder / n).is_file()}


def zip_variant(folder: Path) -> bytes:
    """The files a deployment of this variant needs, with its metrics.json, as one zip (for downloads): an ONNX
    variant's model files, or all of a Hugging Face folder's or a GGUF variant's."""
    import io
    import zipfile

    onnx = (folder / "model.onnx").is_file()  # else a Hugging Face folder or a GGUF file: every file of it
    names = [*VARIANT_FILES, "metrics.json"] if onnx else sorted(
        p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != "status.json")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name in names:
            if (folder / name).is_file():
                z.write(folder / name, arcname=name)
    return buf.getvalue()


def export_args(options: ExportOptions) -> list[str]:
    """The `kdw export` options that make `options` (for a background export)."""
    args = ["--format", "onnx", "--calibration", str(options.calibration),
            "--finetune-epochs", str(options.finetune_epochs)]
    if options.int8:
        args += ["--int8", "--int8-format", options.int8_format]
    if options.prune is not None:
        args += ["--prune", f"{options.prune:g}"]
    return args


# ---------------------------------------------------------------------------
# export, quantization, pruning

def export_onnx(model: nn.Module, input_shape, folder: Path, task=None) -> Path:
    """`model` as folder/model.onnx with a dynamic batch axis (and length, for text; the task decides its inputs):
    one file, so that ONNX Runtime's pre-processing can read it, unless the weights are too large for one protobuf
    (then model.onnx.data beside it)."""
    from workbench.tasks.base import Task

    require("onnx")
    require("onnxscript")
    task = task or Task()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    model = copy.deepcopy(model).float().cpu().eval()
    example = task.export_example(model, input_shape)
    weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # its graph passes log every folded initializer at INFO
    try:
        torch.onnx.export(task.export_module(model), example, str(path), dynamo=True,
                          dynamic_shapes=task.export_dynamic_shapes(), external_data=weight_bytes > SINGLE_FILE_LIMIT,
                          input_names=list(task.export_input_names), output_names=["logits"], verbose=False)
    except Exception as e:  # the exporter's reports are long; say which operator, in one line
        text = str(e)
        op = re.search(r"op='([^']+)'", text) or re.search(r"target=torch\.ops\.([\w.]+)", text)
        what = f"operator {op.group(1)}" if op else f"this model ({type(e).__name__}: {text.strip().splitlines()[0]})"
        raise DeployError(f"the ONNX exporter cannot convert {what}; replace it with supported operations, or "
                          "export the model without it") from None
    return path


def ort_session(path: Path, threads: int | None = None):
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()  # the same threads as the PyTorch figures
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_feed(session, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    """The session's inputs, by name, in the order the task made them."""
    return {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}


def ort_logits(session, x: torch.Tensor, batch_size: int = 256, inputs=None) -> torch.Tensor:
    """(N, K) float32 logits of an ONNX Runtime session on all of `x` (`inputs(batch)` makes the graph's inputs of a
    batch of samples; default: the batch itself)."""
    inputs = inputs or (lambda b: (b,))
    out = [session.run(None, ort_feed(session, inputs(x[i:i + batch_size])))[0] for i in range(0, len(x), batch_size)]
    return torch.from_numpy(np.concatenate(out)).float()


def has_convolutions(path: Path) -> bool:
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("Conv", "ConvTranspose") for n in model.graph.node)


def cpu_int8_features(cpuinfo: str | None = None) -> dict:
    """What this CPU offers int8 kernels: {"arch", "x86", "vnni", "flags"} ("flags": the AVX and VNNI ones found in
    /proc/cpuinfo; None where it cannot be read, and then an x86 CPU counts as one without VNNI)."""
    machine = platform.machine().lower()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    line = next((ln for ln in cpuinfo.splitlines() if ln.startswith(("flags", "Features"))), None)
    flags = None if line is None else sorted(f for f in line.split(":", 1)[1].split()
                                             if f.startswith(("avx", "amx")) or "vnni" in f)
    return {"arch": machine, "x86": machine in ("x86_64", "amd64", "i386", "i686"),
            "vnni": bool(flags and set(flags) & set(VNNI_FLAGS)), "flags": flags}


def int8_settings(fmt: str = "auto", cpu: dict | None = None) -> dict:
    """The int8 data types for `fmt` on `cpu` (default: this one), with the reason, as recorded in the variant.

    ONNX Runtime multiplies u8 activations by s8 weights with VPMADDUBSW on x86 CPUs without VNNI, and its 16-bit
    sums can saturate; its documentation gives two ways out: 7-bit weights (`reduce_range`) or u8 weights too
    (U8U8). `auto` takes reduce-range there, and s8s8 (its default) where VNNI or a non-x86 CPU has no such issue.
    """
    cpu = cpu or cpu_int8_features()
    if fmt == "auto":
        fmt = "reduce-range" if cpu["x86"] and not cpu["vnni"] else "s8s8"
        why = ("chosen for this CPU: x86 without VNNI, where 8-bit weights can saturate ONNX Runtime's int8 "
               "products, so weights use 7 bits" if fmt == "reduce-range" else
               "chosen for this CPU: " + ("VNNI multiplies int8 without saturating" if cpu["x86"] else
                                          f"{cpu['arch']} has no x86 saturation issue"))
    else:
        why = "asked for"
    return {"format": fmt, "activations": "uint8" if fmt == "u8u8" else "int8",
            "weights": "uint8" if fmt == "u8u8" else "int8", "reduce_range": fmt == "reduce-range", "why": why,
            "cpu": cpu}


def quantize_int8(fp32_path: Path, folder: Path, calibration: torch.Tensor, fmt: str = "auto",
                  cpu: dict | None = None, matched: bool = False, inputs=None) -> tuple[Path, dict]:
    """An int8 copy of an fp32 ONNX model in `folder`; returns (path, what was done: "mode" in words, the "int8"
    settings of `int8_settings(fmt, cpu)`, "preprocessed", and "notes").

    Static QDQ with per-channel weights where the model has convolutions (calibrated on `calibration`,
    a (N, C, H, W) tensor of training images); dynamic quantization for pure MLPs. `matched`: static for every
    model, and only the inputs and outputs of Conv, MatMul and Gemm quantized: the scheme `deploy.qad` trains with
    (`inputs(batch)` makes the graph's inputs of a batch of calibration samples; default: the batch itself).
    """
    q = require("onnxruntime.quantization")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "model.onnx"
    conv = matched or has_convolutions(fp32_path)
    if conv and len(calibration) < MIN_CALIBRATION:
        raise DeployError(f"int8 calibration needs at least {MIN_CALIBRATION} images, got {len(calibration)}")
    settings = int8_settings(fmt, cpu)
    weight_type = q.QuantType.QUInt8 if settings["weights"] == "uint8" else q.QuantType.QInt8
    activation_type = q.QuantType.QUInt8 if settings["activations"] == "uint8" else q.QuantType.QInt8
    pre = folder / ".preprocessed.onnx"
    notes = []
    with _quiet_logging():
        try:  # shape inference and graph optimisation, as ONNX Runtime recommends before quantizing
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            source = pre
        except Exception as e:  # optional: quantize the model as exported, and say so
            source = fp32_path
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            notes.append(f"ONNX Runtime's pre-processing failed ({type(e).__name__}: {first}); the model was "
                         "quantized as exported")
        if not conv:
            q.quantize_dynamic(str(source), str(out), per_channel=True, weight_type=weight_type,
                               reduce_range=settings["reduce_range"])
            mode = "dynamic int8 (weights per channel; activations quantized per batch at run time)"
        else:
            feed = inputs or (lambda b: (b,))
            names = [i.name for i in require("onnxruntime").InferenceSession(
                str(source), providers=["CPUExecutionProvider"]).get_inputs()]

            class Reader(q.CalibrationDataReader):
                def __init__(self):
                    self.batches = iter([{n: t.numpy() for n, t in zip(names, feed(calibration[i:i + 64]))}
                                         for i in range(0, len(calibration), 64)])

                def get_next(self):
                    return next(self.batches, None)

            q.quantize_static(str(source), str(out), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                              activation_type=activation_type, weight_type=weight_type,
                              reduce_range=settings["reduce_range"], calibrate_method=q.CalibrationMethod.MinMax,
                              op_types_to_quantize=list(QUANTIZED_OPS) if matched else None)
            mode = (f"static int8, QDQ, per-channel weights, calibrated on {len(calibration)} training "
                    f"{'images' if calibration.dim() == 4 else 'samples'}"
                    + ("; Conv, MatMul and Gemm (inputs and outputs), as quantization-aware training sees them"
                       if matched else ""))
    mode += f"; {settings['format']} ({settings['why']})"
    for leftover in folder.glob(".preprocessed.onnx*"):
        leftover.unlink()
    return out, {"mode": mode, "int8": settings, "preprocessed": source == pre, "notes": notes}


def quantize_int4(fp32_path: Path, folder: Path, group: int = INT4_GROUP, float_output: bool = False,
                  expect: int | None = None) -> tuple[Path, dict]:
    """A copy of an fp32 ONNX model in `folder` whose MatMuls with constant weights become ONNX Runtime's 4-bit
    `MatMulNBits` (weight-only, symmetric, groups of `group` along the inputs; activations stay float): the scheme
    `deploy.qad.fake_quant_int4` trains with. `float_output` keeps the MatMul that makes the logits float (a tied
    output layer, which `qad.prepare_int4` keeps float too). `expect`: the number of MatMuls that must be quantized
    (the fake-quantized layers), or DeployError. Returns (path, {"mode", "matmuls"})."""
    onnx = require("onnx")
    nbits = require("onnxruntime.quantization.matmul_nbits_quantizer")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "model.onnx"
    model = onnx.load(str(fp32_path))
    exclude = [n.name for n in model.graph.node if n.op_type == "MatMul" and "logits" in n.output] \
        if float_output else []
    with _quiet_logging():
        quantizer = nbits.MatMulNBitsQuantizer(
            model, nodes_to_exclude=exclude,
            algo_config=nbits.DefaultWeightOnlyQuantConfig(block_size=group, is_symmetric=True))
        quantizer.process()
        quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    count = [n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node].count("MatMulNBits")
    if not count or (expect is not None and count != expect):
        raise DeployError(f"ONNX Runtime's 4-bit quantizer quantized {count} matrix multiplications of this model, "
                          + ("" if expect is None else f"where its training rounded {expect} linear layers; the "
                                                       "artifact would not be the model trained, so it is not made"))
    return out, {"mode": f"4-bit weights (MatMulNBits, symmetric, groups of {group}; activations float) on {count} "
                         "MatMuls, by ONNX Runtime's quantizer" + ("; the tied output layer float, as its embedding"
                                                                   if exclude else ""), "matmuls": count}


def int8_check(agreement: float, fmt: str) -> dict:
    """Whether an int8 variant's top-1 agreement with its fp32 model holds (>= INT8_MIN_AGREEMENT), and what to try
    when it does not."""
    ok = agreement >= INT8_MIN_AGREEMENT
    others = [f for f in INT8_FORMATS if f not in ("auto", fmt)]
    advice = None if ok else (
        f"int8 agrees with fp32 on {100 * agreement:.1f}% of test samples, below {100 * INT8_MIN_AGREEMENT:.0f}%: "
        f"export again with --int8-format {' or '.join(others)}, or calibrate on more training images "
        "(--calibration)")
    return {"agreement": agreement, "threshold": INT8_MIN_AGREEMENT, "ok": ok, "advice": advice}


class _quiet_logging:
    """ONNX Runtime's quantization tools log advice at WARNING on the root logger; keep the CLI's output clean."""

    def __enter__(self):
        import logging

        self.logger = logging.getLogger()
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        self.nbits = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
        self.nbits_level = self.nbits.level
        self.nbits.setLevel(logging.ERROR)  # it logs every node it visits at INFO

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
        self.nbits.setLevel(self.nbits_level)


PRUNE_ROUND_TO = 8  # kept channels come in multiples of 8, which int8 and SIMD kernels run at full speed


def prune_model(model: nn.Module, input_shape, fraction: float, round_to: int = PRUNE_ROUND_TO) -> nn.Module:
    """A copy of `model` with `fraction` of each layer's channels (units) removed by L2 magnitude, keeping a
    multiple of `round_to` in each layer (torch-pruning's `round_to`; a layer narrower than that keeps its own).

    The classifier's outputs are kept (its inputs shrink with the layer before it).
    """
    tp = require("torch_pruning")
    pruned = copy.deepcopy(model).float().cpu().eval()
    linears = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise DeployError("pruning needs a model whose classifier is a linear layer")
    pruner = tp.pruner.BasePruner(pruned, torch.zeros(1, *input_shape),
                                  importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=fraction,
                                  ignored_layers=[linears[-1]], round_to=round_to)
    pruner.step()
    return pruned


def calibration_images(dataset, count: int, seed: int = 0) -> torch.Tensor:
    """A seeded sample of `count` training samples (normalised, as the model sees them); asking for the default
    (512) from a smaller training set (a table of a few hundred rows) takes all of it."""
    n = len(dataset.x_train)
    if count == ExportOptions.calibration:
        count = min(count, n)
    if count > n:
        raise DeployError(f"int8 calibration asks for {count} images, but the training set has {n}")
    g = torch.Generator().manual_seed(seed)
    return dataset.x_train[torch.randperm(n, generator=g)[:count]].contiguous()


# ---------------------------------------------------------------------------
# measuring an artifact by running it

def measure(folder: Path, source: nn.Module, dataset, teacher_logits: torch.Tensor | None) -> dict:
    """Every figure of the artifact in `folder`, measured with ONNX Runtime; PyTorch eager of `source` beside it."""
    ort = require("onnxruntime")
    task = task_for(dataset.name)
    session = ort_session(folder / "model.onnx")
    x_test, y_test = dataset.split("test")
    src = source.float().cpu().eval()
    logits = ort_logits(session, x_test, inputs=lambda b: task.export_inputs(src, b))  # (N_test, K)
    with torch.inference_mode():
        ref = torch.cat([source(x_test[i:i + 256]).float() for i in range(0, len(x_test), 256)])
    files = artifact_files(folder)
    shape = tuple(dataset.input_shape)
    one, batch = task.timing_batch(src, dataset, 1), task.timing_batch(src, dataset, 256)
    feed_one, feed_batch = ort_feed(session, task.export_inputs(src, one)), ort_feed(session, task.export_inputs(src, batch))
    with OtherCpuLoad() as load:
        lat = time_calls(lambda: session.run(None, feed_one), warmup=5, reps=30, min_time_s=0.2)
        thr = time_calls(lambda: session.run(None, feed_batch), warmup=2, reps=10, min_time_s=0.3)
        eager_lat = time_forward(src, one, 5, 30, 0.2)
        eager_thr = time_forward(src, batch, 2, 10, 0.3)
    import statistics

    profile = {"latency_ms": 1e3 * statistics.median(lat), "throughput": 256 / statistics.median(thr),
               "runtime": f"onnxruntime {ort.__version__}, CPUExecutionProvider", "device": "cpu",
               "device_name": device_name("cpu"), "threads": session.get_session_options().intra_op_num_threads}
    if load.fraction is not None:
        profile["cpu_busy_elsewhere"] = round(load.fraction, 3)
    if task.timed_sample(dataset):
        profile["sample"] = task.timed_sample(dataset)
    return {
        "test": task_for(dataset.name).metrics(logits, y_test, dataset.num_classes, teacher_logits),
        "check": {"max_abs_logit_diff": (logits - ref).abs().max().item(),
                  "top1_agreement": (logits.argmax(1) == ref.argmax(1)).float().mean().item(),
                  "reference": "the PyTorch fp32 model this artifact was made from, on the whole test set"},
        "files": files, "size_bytes": sum(files.values()), "size_mb": sum(files.values()) / 1e6,
        "params": sum(p.numel() for p in source.parameters()),  # all of them: a frozen teacher's count too
        "flops": flops_per_sample(src, shape),
        "profile": profile,
        "pytorch_eager": {"latency_ms": 1e3 * statistics.median(eager_lat),
                          "throughput": 256 / statistics.median(eager_thr), "threads": torch.get_num_threads()},
    }


def measure_lm(folder: Path, source: nn.Module, dataset, teacher_logits=None) -> dict:
    """Every figure of a language model's artifact in `folder`, measured with ONNX Runtime: perplexity on the test
    blocks, per-token agreement with the PyTorch model it was made from, size, latency and tokens per second over
    blocks of the task's timed length (batch 1 and 32); PyTorch eager beside it."""
    import math
    import statistics

    import torch.nn.functional as F

    ort = require("onnxruntime")
    task = task_for(dataset.name, "language-modelling")
    session = ort_session(folder / "model.onnx")
    src = source.float().cpu().eval()
    blocks = dataset.x_test
    nll, agree, n_tok, diff = 0.0, 0, 0, 0.0
    for i in range(0, len(blocks), 8):
        x = blocks[i:i + 8]
        z = torch.from_numpy(session.run(None, {"input_ids": x[:, :-1].numpy()})[0]).float()
        with torch.inference_mode():
            ref = src(x[:, :-1]).float()
        t = x[:, 1:].reshape(-1)
        nll += float(F.cross_entropy(z.reshape(-1, z.shape[-1]), t, reduction="sum"))
        agree += int((z.argmax(-1) == ref.argmax(-1)).sum())
        n_tok += t.numel()
        diff = max(diff, float((z - ref).abs().max()))
    one, batch = task.timing_batch(src, dataset, 1), task.timing_batch(src, dataset, 32)
    with OtherCpuLoad() as load:
        lat = time_calls(lambda: session.run(None, {"input_ids": one.numpy()}), warmup=3, reps=20, min_time_s=0.2)
        thr = time_calls(lambda: session.run(None, {"input_ids": batch.numpy()}), warmup=1, reps=5, min_time_s=0.3)
        eager_lat = time_forward(src, one, 3, 20, 0.2)
    files = artifact_files(folder)
    length = one.shape[1]
    profile = {"latency_ms": 1e3 * statistics.median(lat), "ms_per_token": 1e3 * statistics.median(lat) / length,
               "tokens_per_s_b1": length / statistics.median(lat),
               "tokens_per_s_b32": batch.numel() / statistics.median(thr), "throughput": 32 / statistics.median(thr),
               "runtime": f"onnxruntime {ort.__version__}, CPUExecutionProvider", "device": "cpu",
               "device_name": device_name("cpu"), "threads": session.get_session_options().intra_op_num_threads,
               "sample": task.timed_sample(dataset)}
    if load.fraction is not None:
        profile["cpu_busy_elsewhere"] = round(load.fraction, 3)
    return {
        "test": {"perplexity": math.exp(min(nll / n_tok, 50.0)), "nll": nll / n_tok, "tokens": n_tok},
        "check": {"max_abs_logit_diff": diff, "top1_agreement": agree / n_tok,
                  "reference": "the PyTorch fp32 model this artifact was made from, at every next-token position of "
                               "the test blocks"},
        "files": files, "size_bytes": sum(files.values()), "size_mb": sum(files.values()) / 1e6,
        "params": sum(p.numel() for p in source.parameters()), "flops": None, "profile": profile,
        "pytorch_eager": {"latency_ms": 1e3 * statistics.median(eager_lat), "threads": torch.get_num_threads()},
    }


# ---------------------------------------------------------------------------
# a run's variants

def teacher_test_logits(run: Run, store: RunStore, dataset) -> torch.Tensor | None:
    spec = (run.summary.get("teacher") or {}).get("spec")
    if not spec:
        return None
    teacher = load_teacher(spec, store, trust_factory=bool(run.config.get("trust_factory")))
    return cached_logits(teacher, task_for(dataset.name).view_for(dataset, teacher.model), "test", "plain", store.cache_dir / "teacher-logits",
                         "cpu")


def exportable(run: Run) -> None:
    """ValueError unless the run finished and has its weights."""
    state = run.state
    if state != "done":
        raise ValueError(f"run {run.run_id} is {state}; only finished runs can be exported")
    if not run.weights_path("best").is_file():
        raise ValueError(f"run {run.run_id} has no weights (student.safetensors) to export")


def export_run(run: Run, store: RunStore, options: ExportOptions, progress=None, command: str = "") -> list[dict]:
    """Make every variant `options` asks for under `run`, each measured; returns their metrics.

    `progress(name, text, fraction)` is told what is happening. A variant that fails is marked failed
    with its reason, and the ones before it stay.
    """
    exportable(run)
    run_task = task_for(run.config["dataset"], run.config.get("task"))
    if options.prune is not None and not run_task.prunable:
        raise DeployError(f"pruning is for image and table models; export a {run_task.title.lower()} run without "
                          "--prune")
    for mod in ("onnx", "onnxscript", "onnxruntime") + (("torch_pruning",) if options.prune else ()):
        require(mod)
    say = progress or (lambda *a: None)
    lock = export_lock(run)
    if export_busy(run):
        say("export", "waiting for the export of this run that is already running", 0.0)
    with lock:  # two exports of one run never write the same variant folders at once
        return _export_run(run, store, options, say, command)


def _export_run(run: Run, store: RunStore, options: ExportOptions, say, command: str) -> list[dict]:
    names = options.variant_names()
    for n in names:
        set_variant_status(run.variants_path / n, "queued")
    config = run.config
    model = run.load_model("best").float().eval()
    task = task_for(config["dataset"], config.get("task"))
    source = task.load_run_data(config, model)
    dataset = task.view_for(source, model)  # the samples as the student saw them in training
    teacher_logits = None if task.token_level else teacher_test_logits(run, store, source)
    measured = measure_lm if task.token_level else measure
    calib = calibration_images(dataset, options.calibration, options.seed) if options.int8 else None
    base = {"run_id": run.run_id, "command": command, "created": time.time()}
    results = []

    def make(name: str, source: nn.Module, step: int, fp32_from: Path | None = None, extra: dict | None = None):
        folder = run.variants_path / name
        shutil.rmtree(folder, ignore_errors=True)
        set_variant_status(folder, "running", progress={"text": "exporting", "fraction": step / len(names)})
        say(name, "exporting", step / len(names))
        try:
            if fp32_from is None:
                export_onnx(source, dataset.input_shape, folder, task)
                info = {"precision": "fp32", "quantization": None}
            else:
                _, done = quantize_int8(fp32_from, folder, calib, options.int8_format)
                info = {"precision": "int8", "quantization": done["mode"], "int8": done["int8"],
                        "preprocessed": done["preprocessed"], "notes": done["notes"]}
            say(name, "measuring with ONNX Runtime", (step + 0.5) / len(names))
            metrics = {"variant": name, "format": "onnx", **info, **(extra or {}), **base,
                       **measured(folder, source, dataset, teacher_logits)}
            if fp32_from is not None:
                metrics["int8_check"] = int8_check(metrics["check"]["top1_agreement"], done["int8"]["format"])
            atomic_write_json(folder / "metrics.json", metrics)
            set_variant_status(folder, "done")
            results.append(metrics)
            return folder
        except Exception as e:
            set_variant_status(folder, "failed", error=friendly_error(e))
            raise

    step = 0
    fp32 = make("onnx-fp32", model, step)
    step += 1
    if options.int8:
        make("onnx-int8", model, step, fp32_from=fp32 / "model.onnx")
        step += 1
    if options.prune is not None:
        tag = f"pruned{round(100 * options.prune)}"
        say(f"{tag}-onnx-fp32", "pruning and fine-tuning with the teacher", step / len(names))
        set_variant_status(run.variants_path / f"{tag}-onnx-fp32", "running",
                    progress={"text": "pruning and fine-tuning with the teacher", "fraction": step / len(names)})
        pruned, finetune = prune_and_finetune(run, store, model, dataset, options)
        extra = {"pruned_fraction": options.prune, "finetune": finetune}
        fp32_p = make(f"{tag}-onnx-fp32", pruned, step, extra=extra)
        step += 1
        if options.int8:
            make(f"{tag}-onnx-int8", pruned, step, fp32_from=fp32_p / "model.onnx", extra=extra)
    return results


def prune_and_finetune(run: Run, store: RunStore, model: nn.Module, dataset, options: ExportOptions
                       ) -> tuple[nn.Module, dict]:
    """Prune `model`, then distil it again for a few epochs with the run's own teacher and method.

    Returns (the pruned, fine-tuned student at its best validation epoch, what the fine-tune did).
    """
    from dataclasses import replace


    pruned = prune_model(model, dataset.input_shape, options.prune)
    x_test, y_test = dataset.split("test")
    before = (predict_logits(pruned, x_test).argmax(1) == y_test).float().mean().item()
    out = {"epochs": options.finetune_epochs, "test_acc_before": before, "params_before": count_params(model),
           "params_after": count_params(pruned)}
    if options.finetune_epochs == 0:
        out["test_acc_after"] = before
        return pruned, out
    cfg = TrainConfig.from_dict(run.config)
    cfg = replace(cfg, epochs=options.finetune_epochs, lr=cfg.lr * options.finetune_lr_scale, profile=False,
                  group=None, device="cpu" if cfg.device == "auto" else cfg.device)
    summary = train(cfg, store=store, dataset=dataset, student=pruned)
    tuned = summary["_model"].float().cpu().eval()
    out.update(test_acc_after=summary["test"]["accuracy"], lr=cfg.lr, method=cfg.method,
               objective=summary["method"]["objective"])
    return tuned, out


def variant_state(folder: Path) -> str | None:
    """What a variant's status.json says ("queued", "running", "done", "failed", "cancelled"), or None where it has
    none or it cannot be read; done only with its metrics.json beside it."""
    try:
        state = (read_json_object(folder / "status.json") or {}).get("state")
    except RunStoreError:
        return None
    return None if state == "done" and not (folder / "metrics.json").is_file() else state


def start_variants(store: RunStore, run: Run, verb: str, args: list[str], names: list[str], doing: str) -> None:
    """`kdw VERB RUN ARGS` as a detached process that makes the variants `names` of `run` (an export, a pipeline),
    refused while another export of the run works (`doing`: what this one would do, for the sentence); the variants
    read queued at once, before the process has imported anything, and its output goes to variants/VERB.log."""
    if export_busy(run):
        raise DeployError(f"an export of {run.run_id} is running; wait for it to finish before {doing}")
    folder = run.variants_path
    folder.mkdir(parents=True, exist_ok=True)
    proc = spawn(Command.kdw(verb, run.run_id, *args, store_root=store.root), store.root, folder / f"{verb}.log")
    for name in names:
        set_variant_status(folder / name, "queued", identity=process_identity(proc.pid))


def start_export(store: RunStore, run_id: str, options) -> None:
    """`kdw export RUN ...` as a detached process (the app's Deploy panel); progress lands in each variant's
    status.json under runs/RUN/variants/. `options` is an `ExportOptions`, checked here first."""
    run = store.get(run_id)
    exportable(run)
    start_variants(store, run, "export", export_args(options), options.variant_names(), "exporting it again")


LM_FORMATS = {"hf": "hf", "gguf": "gguf-f16", "gguf-q8_0": "gguf-q80"}  # a format in the app: its variant's name


def start_format_export(store: RunStore, run_id: str, fmt: str) -> None:
    """`kdw export RUN --format hf | gguf [--gguf-type q8_0]` as a detached process (the app's Deploy panel for a
    language model): the variant reads queued at once and its process writes running, done or failed."""
    if fmt not in LM_FORMATS:
        raise DeployError(f"the format must be one of {', '.join(LM_FORMATS)}, got {fmt!r}")
    run = store.get(run_id)
    exportable(run)
    args = ["--format", fmt.split("-")[0]] + (["--gguf-type", fmt.split("-")[1]] if "-" in fmt else [])
    start_variants(store, run, "export", args, [LM_FORMATS[fmt]], "exporting it again")
