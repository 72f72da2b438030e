"""Quantization-aware distillation: the student trains with the int8 (or 4-bit) rounding it will be deployed with.

A model is *prepared* by wrapping each convolution and linear layer in a `FakeQuantLayer`: in the forward pass its
input, its weight and its output are quantized and dequantized at once (PyTorch's `FakeQuantize` modules, whose
backward is the straight-through estimator: the gradient passes through the rounding as if it were the identity,
and is zero outside the clipping range). Training under the run's own teacher and method then pulls the *quantized*
student towards the full-precision teacher (QAD; trained with cross-entropy alone it is QAT).

The scheme is the one ONNX Runtime's static quantizer applies when `quantize_int8_static` turns the trained model into
the deployed artifact, so that the number trained for is the number deployed:

- weights: per output channel, symmetric, int8 in [-127, 127] (or [-64, 64] with `reduce-range`, 7-bit weights for
  x86 CPUs without VNNI): scale = max|w| / 127;
- activations (the inputs and outputs of Conv, MatMul and Gemm): per tensor, asymmetric, uint8 in [0, 255] (int8 in
  [-128, 127] for s8s8): scale = (max − min) / 255 over a range that includes 0, as ONNX Runtime's MinMax
  calibrator computes it;
- batch normalisation is folded into the convolution before anything is quantized (ONNX Runtime's pre-processing
  does the same to the exported graph);
- `calibrate` sets every activation range from the float model on the same calibration samples that ONNX Runtime's
  calibrator reads, so both quantize with the same scales.

`fake_quant_logits` of a calibrated model and the ONNX Runtime artifact agree within rounding: the ops between the
quantized ones (ReLU, pooling, residual additions) stay float in both. tests/test_compress.py states the tolerance.

Language models get **4-bit weights** instead (`prepare_int4`): every linear layer's weight is rounded in groups of
32 along its inputs, symmetric, as ONNX Runtime's `MatMulNBits` quantizer rounds it (the value of largest magnitude
in a group maps to −8, scale = that value / −8, q = clamp(round(w / scale), −8, 7)); activations stay float. The
straight-through estimator is written out there (w + (rounded − w).detach()), since PyTorch's fake-quant ops have no
groups. `quantize_int4` makes the artifact with ONNX Runtime's own quantizer.

References: Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference" (CVPR 2018) for fake quantization with the straight-through estimator; NVIDIA ModelOpt's QAD and
torchao's QAT for quantization-aware training under distillation.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import FakeQuantize, MinMaxObserver
from torch.fx.experimental.optimization import fuse

from workbench.errors import DeployError

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")  # the ONNX ops whose arithmetic runs in int8 (their inputs and outputs)
INT4_GROUP = 32  # weights per 4-bit scale, along a linear layer's inputs (ONNX Runtime's MatMulNBits block size)


def weight_range(int8: dict) -> tuple[int, int]:
    """The integer range of weights under the `int8_settings` of an export."""
    if int8["weights"] == "uint8":
        return 0, 255
    return (-64, 64) if int8["reduce_range"] else (-127, 127)


def activation_range(int8: dict) -> tuple[int, int, torch.dtype]:
    return (0, 255, torch.quint8) if int8["activations"] == "uint8" else (-128, 127, torch.qint8)


def _activation_fq(int8: dict) -> FakeQuantize:
    low, high, dtype = activation_range(int8)
    return FakeQuantize(observer=MinMaxObserver, quant_min=low, quant_max=high, dtype=dtype,
                        qscheme=torch.per_tensor_affine)


def fake_quant_weight(w: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """`w` rounded per output channel as ONNX Runtime rounds weights (symmetric: scale = 2·max|w| / (high − low),
    zero point the middle of the range), in float; the gradient passes straight through (PyTorch's
    `fake_quantize_per_channel_affine`)."""
    absmax = w.detach().abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1e-12)
    scale = (2 * absmax / (high - low)).float()
    zero = torch.full_like(scale, round((low + high) / 2), dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, low, high)


class FakeQuantLayer(nn.Module):
    """A convolution or linear layer whose input, weight and output are fake-quantized (int8 rounding in float)."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, int8: dict):
        super().__init__()
        self.layer = layer
        self.input_fq = _activation_fq(int8)
        self.output_fq = _activation_fq(int8)
        self.weight_range = weight_range(int8)
        self.quantize_weight = True

    def forward(self, x):
        w = fake_quant_weight(self.layer.weight, *self.weight_range) if self.quantize_weight else self.layer.weight
        x = self.input_fq(x)
        if isinstance(self.layer, nn.Linear):
            y = F.linear(x, w, self.layer.bias)
        else:
            y = self.layer._conv_forward(x, w, self.layer.bias)
        return self.output_fq(y)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` with every BatchNorm that follows a convolution folded into it (torch.fx's `fuse`), as ONNX
    Runtime folds them before quantizing. A model without BatchNorm is returned as a copy."""
    model = copy.deepcopy(model).float().cpu().eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    try:
        fused = fuse(model)
    except Exception as e:
        raise DeployError(f"quantization-aware training folds batch normalisation into the convolutions, which needs a "
                          f"model torch.fx can trace; this one cannot be traced ({type(e).__name__})") from None
    for name in ("kdw_task", "kdw_input_shape", "kdw_num_classes"):
        if hasattr(model, name):
            setattr(fused, name, getattr(model, name))
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    if left:
        raise DeployError(f"{left} batch normalisation layer(s) do not follow a convolution and cannot be folded; "
                          "int8 quantization-aware training needs them folded")
    return fused


def prepare(model: nn.Module, int8: dict) -> nn.Module:
    """A copy of `model`, batch normalisation folded, with every Conv2d and Linear wrapped in a `FakeQuantLayer`."""
    model = fold_batchnorm(model)

    def wrap(parent: nn.Module):
        for name, child in parent.named_children():
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                setattr(parent, name, FakeQuantLayer(child, int8))
            else:
                wrap(child)

    wrap(model)
    if not any(isinstance(m, FakeQuantLayer) for m in model.modules()):
        raise DeployError("int8 quantization-aware training needs a model with convolution or linear layers")
    return model


def fake_quant_layers(model: nn.Module) -> list[FakeQuantLayer]:
    return [m for m in model.modules() if isinstance(m, FakeQuantLayer)]


@torch.no_grad()
def calibrate(model: nn.Module, calibration: torch.Tensor, inputs=None, batch_size: int = 64) -> nn.Module:
    """Set every activation range from the *float* forward on `calibration` (minimum and maximum over all of it, as
    ONNX Runtime's MinMax calibrator does), then switch rounding on with the ranges frozen. A weight's scale is
    always its own current range (`fake_quant_weight`), so the rounding follows it as it trains. Returns `model`,
    in eval mode."""
    inputs = inputs or (lambda b: (b,))
    layers = fake_quant_layers(model)
    for layer in layers:
        for fq in (layer.input_fq, layer.output_fq):
            fq.activation_post_process.reset_min_max_vals()
            fq.disable_fake_quant()
            fq.enable_observer()
        layer.quantize_weight = False
    model.eval()
    for i in range(0, len(calibration), batch_size):
        model(*inputs(calibration[i:i + batch_size]))
    for layer in layers:
        for fq in (layer.input_fq, layer.output_fq):
            fq.enable_fake_quant()
            fq.disable_observer()
            fq.calculate_qparams()
            scale, zero = fq.activation_post_process.calculate_qparams()
            fq.scale.resize_(scale.shape).copy_(scale)
            fq.zero_point.resize_(zero.shape).copy_(zero)
        layer.quantize_weight = True
    return model


def fake_quant_int4(w: torch.Tensor, group: int = INT4_GROUP) -> torch.Tensor:
    """A linear layer's (out, in) weight rounded to 4 bits in groups of `group` inputs, as ONNX Runtime's symmetric
    MatMulNBits quantizer rounds it, in float; the gradient passes straight through."""
    out_features, in_features = w.shape
    g = w.reshape(out_features, in_features // group, group)
    peak = torch.gather(g, -1, g.detach().abs().argmax(-1, keepdim=True))  # signed: the largest magnitude
    scale = (peak / -8).detach()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    rounded = (torch.clamp(torch.round(g / scale), -8, 7) * scale).reshape(out_features, in_features)
    return w + (rounded - w).detach()


class Int4Linear(nn.Module):
    """A linear layer whose weight is rounded to 4 bits in the forward pass (`fake_quant_int4`)."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return F.linear(x, fake_quant_int4(self.layer.weight), self.layer.bias)


def int4_problem(model: nn.Module, group: int = INT4_GROUP) -> str | None:
    """Why `model`'s linear layers cannot take 4-bit weights in groups of `group`, or None."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return "it has no linear layers, and 4-bit weights are for the matrix multiplications of linear layers"
    odd = [f"{n} ({m.in_features} inputs)" for n, m in linears if m.in_features % group]
    if odd:
        return (f"{len(odd)} linear layer(s) have a number of inputs that is not a multiple of {group}, the group "
                f"size of 4-bit weights: {', '.join(odd[:3])}{' …' if len(odd) > 3 else ''}")
    return None


def tied_linears(model: nn.Module) -> set[str]:
    """The linear layers whose weight is an embedding's too (a language model's tied output layer). They stay float:
    the embedding they share it with is a lookup that 4-bit MatMuls do not cover."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m.weight) in embedded}


def prepare_int4(model: nn.Module) -> nn.Module:
    """A float copy of `model` with every nn.Linear wrapped in an `Int4Linear`, except a tied output layer
    (`tied_linears`); DeployError if one cannot take 4-bit weights."""
    problem = int4_problem(model)
    if problem:
        raise DeployError(f"4-bit weights cannot be used here: {problem}")
    model = copy.deepcopy(model).float().cpu().eval()
    tied = tied_linears(model)

    def wrap(parent: nn.Module, prefix: str):
        for name, child in parent.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, nn.Linear) and path not in tied:
                setattr(parent, name, Int4Linear(child))
            else:
                wrap(child, path + ".")

    wrap(model, "")
    return model


def int4_layers(model: nn.Module) -> int:
    return sum(isinstance(m, Int4Linear) for m in model.modules())


def strip(model: nn.Module) -> nn.Module:
    """A plain float copy of a prepared model: each `FakeQuantLayer` or `Int4Linear` replaced by its layer (the
    latent weights that ONNX Runtime's quantizer rounds with the same scheme)."""
    model = copy.deepcopy(model)

    def unwrap(parent: nn.Module):
        for name, child in parent.named_children():
            if isinstance(child, (FakeQuantLayer, Int4Linear)):
                setattr(parent, name, child.layer)
            else:
                unwrap(child)

    unwrap(model)
    return model.eval()
