"""Evaluation: accuracy and calibration from logits, and model figures (size, FLOPs, latency).

Definitions (docs/conventions.md):

- *params*: trainable parameter count.
- *size*: bytes of the saved fp32 safetensors file, shown in MB (10⁶ bytes).
- *FLOPs*: forward FLOPs for one sample from ``torch.utils.flop_counter.FlopCounterMode``,
  which counts a multiply-add as 2 FLOPs.
- *latency*: median of ≥ 30 timed forward passes after ≥ 5 warm-up passes, batch 1,
  under ``torch.inference_mode()``, synchronising CUDA before each reading;
  *throughput*: samples/s at batch 256.
- *agreement*: fraction of samples whose student top-1 equals the teacher's top-1.
- *ECE*: expected calibration error over 15 equal-width confidence bins.

Every model figure is labelled with the device, dtype and thread count it was measured on.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from functools import lru_cache

import torch
from torch import nn

from workbench.core.metrics import predict_logits  # noqa: F401 (this module's public name too)
from workbench.models.zoo import checkpoint_bytes, count_params, sample_input

# ---------------------------------------------------------------------------
# model figures

@lru_cache(maxsize=None)
def device_name(device: str) -> str:
    """A readable name for a device, e.g. 'NVIDIA H100 80GB HBM3' or the CPU model."""
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    if d.type == "mps":
        return "Apple MPS"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def flops_per_sample(model: nn.Module, input_shape) -> int:
    """Forward FLOPs for one sample (a multiply-add counts as 2), via FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    x = sample_input(model, input_shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_calls(fn, warmup: int = 5, reps: int = 30, min_time_s: float = 0.0, max_reps: int | None = None,
               sync=None) -> list[float]:
    """Seconds of each timed call of `fn()`, after `warmup` untimed ones (`sync()` brackets each reading).

    At least `reps` calls are timed; while their total is under `min_time_s`, timing goes on (up to
    `max_reps`, default 20·reps). Fast models thus get hundreds of readings, so that their median
    survives the odd call that the OS scheduler stalls on a busy machine. Shared by PyTorch models
    and ONNX Runtime sessions, so both are timed the same way.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    max_reps = max(reps, max_reps if max_reps is not None else 20 * reps)
    times: list[float] = []
    while len(times) < reps or (sum(times) < min_time_s and len(times) < max_reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


@torch.inference_mode()
def time_forward(model: nn.Module, x: torch.Tensor, warmup: int = 5, reps: int = 30,
                 min_time_s: float = 0.0, max_reps: int | None = None) -> list[float]:
    """Seconds of each timed forward pass of `model` on `x` (see `time_calls`)."""
    model.eval()
    return time_calls(lambda: model(x), warmup, reps, min_time_s, max_reps, sync=lambda: _sync(x.device))


def latency_ms(model: nn.Module, input_shape, device: torch.device | str = "cpu",
               warmup: int = 5, reps: int = 30, min_time_s: float = 0.2) -> float:
    """Median batch-1 forward latency in milliseconds (≥ `reps` passes, ≥ `min_time_s` of them when fast)."""
    if warmup < 5 or reps < 30:
        raise ValueError("docs/conventions.md asks for >= 5 warm-up and >= 30 timed passes")
    x = sample_input(model, input_shape, random=True)
    return 1e3 * statistics.median(time_forward(model, x, warmup, reps, min_time_s))


def throughput(model: nn.Module, input_shape, batch_size: int = 256, warmup: int = 2, reps: int = 10,
               min_time_s: float = 0.3) -> float:
    """Samples per second at `batch_size`, from the median of ≥ `reps` timed passes (≥ `min_time_s` when fast)."""
    x = sample_input(model, input_shape, batch_size, random=True)
    return batch_size / statistics.median(time_forward(model, x, warmup, reps, min_time_s))


def model_profile(model: nn.Module, input_shape, device: torch.device | str = "cpu",
                  timing: bool = True) -> dict:
    """Params, size, FLOPs, latency and throughput of `model`, labelled with where they were measured."""
    device = torch.device(device)
    model = model.to(device).eval()
    out = {
        "params": count_params(model),
        "size_bytes": len(checkpoint_bytes(model)),
        "flops": flops_per_sample(model, input_shape),
        "device": str(device),
        "device_name": device_name(str(device)),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
    }
    out["size_mb"] = out["size_bytes"] / 1e6
    if timing:
        with OtherCpuLoad() as load:
            out["latency_ms"] = latency_ms(model, input_shape, device)
            out["throughput"] = throughput(model, input_shape)
        if device.type == "cpu" and load.fraction is not None:
            out["cpu_busy_elsewhere"] = round(load.fraction, 3)
    return out


class OtherCpuLoad:
    """The share of the machine's CPU time that *other* processes used while the block ran.

    Takes the busy time of all cores from `psutil.cpu_times()` before and after (steal
    included: the time a hypervisor gave to other machines), subtracts this process's own CPU
    time, and divides by wall time × cores. CPU timings taken while other work competes for the
    cores are unreliable (a multi-threaded pass waits for its slowest thread), so
    `model_profile` records the figure and the tables flag rows above `BUSY_LIMIT`. `fraction`
    stays None where the system does not report it ("unknown").
    """

    fraction: float | None = None

    @staticmethod
    def _busy_seconds() -> float | None:
        try:
            import psutil

            t = psutil.cpu_times()
        except Exception:  # no psutil, or a platform it cannot read
            return None
        idle = t.idle + getattr(t, "iowait", 0.0)
        guest = getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)  # already inside user time on Linux
        return sum(t) - idle - guest

    def __enter__(self) -> "OtherCpuLoad":
        self._busy0, self._own0, self._t0 = self._busy_seconds(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        busy1, own1, wall = self._busy_seconds(), time.process_time(), time.perf_counter() - self._t0
        if self._busy0 is None or busy1 is None or wall <= 0:
            return
        other = (busy1 - self._busy0) - (own1 - self._own0)
        self.fraction = min(1.0, max(0.0, other / (wall * (os.cpu_count() or 1))))


def token_profile(model: nn.Module, dataset, task, device="cpu", timing: bool = True) -> dict:
    """A language model's figures: params, size, and tokens per second at batch 1 and 32 over blocks of the
    task's `timed_sample` length, on the CPU (a forward over the block, no KV cache)."""
    model = model.to(device).eval()
    out = {"params": count_params(model), "size_bytes": len(checkpoint_bytes(model)), "device": str(device),
           "device_name": device_name(str(device)), "dtype": "float32", "threads": torch.get_num_threads(),
           "sample": task.timed_sample(dataset)}
    out["size_mb"] = out["size_bytes"] / 1e6
    if not timing:
        return out
    with OtherCpuLoad() as load, torch.inference_mode():
        for batch in (1, 32):
            x = task.timing_batch(model, dataset, batch).to(device)
            model(x)  # warm-up
            reps, t0 = 0, time.perf_counter()
            while reps < 3 and (reps == 0 or time.perf_counter() - t0 < 2.0):
                model(x)
                reps += 1
            dt = (time.perf_counter() - t0) / reps
            if batch == 1:
                out["latency_ms"] = 1000 * dt
                out["ms_per_token"] = 1000 * dt / x.shape[1]
            out[f"tokens_per_s_b{batch}"] = x.numel() / dt
    out["throughput"] = out["tokens_per_s_b32"] / x.shape[1]  # blocks per second at batch 32
    if load.fraction is not None:
        out["cpu_busy_elsewhere"] = round(load.fraction, 3)
    return out


def profile_for(task, model: nn.Module, dataset, device="cpu") -> dict:
    """The profile a run's summary holds, in the units of its task: per token for a language model, per sample
    otherwise (with what one timed sample is, where the task says)."""
    if task.sample_kind == "tokens":
        return token_profile(model, dataset, task, device)
    out = model_profile(model, dataset.input_shape, device)
    if task.timed_sample(dataset):
        out["sample"] = task.timed_sample(dataset)
    return out
