"""The model zoo: families with size knobs, each built from a small config.

A `ModelConfig` names a family and its knobs; `build_model(config, input_shape,
num_classes)` turns it into an `nn.Module` giving logits for that data set, so a
run can record its config and rebuild the model later. Every family also names
its natural stages (`model.stages`: name -> module path), so feature methods
can hook them without knowing module paths.

Families and knobs:

- ``mlp``: ``depth`` hidden layers of ``width`` units.
- ``cnn``: a small VGG-style net, three stages of ``depth`` conv-BN-ReLU blocks
  with ``width``, 2x``width`` and 4x``width`` channels, each stage ending in a 2x2 max-pool.
- ``resnet``: CIFAR-style ResNet-``depth`` (8, 14, 20, 32, 56) with base ``width`` channels.
- ``mobilenet_v2``: torchvision's MobileNetV2 with width multiplier ``width``, adapted
  to small inputs (3x3 stride-1 stem for any channel count).
- ``resnet18``: torchvision's ResNet-18 with a 3x3 stride-1 stem, no max-pool.
  ``pretrained=True`` loads torchvision's ImageNet weights (online only; the new stem is trained).

Models from elsewhere, named by a spec string (`parse_model`):

- ``torchvision:NAME``: any classification model of ``torchvision.models.get_model`` (``resnet50``,
  ``mobilenet_v2``, ``efficientnet_b0``, ``vit_b_16``...), unchanged, with its classifier sized to the
  data set; ``pretrained=True`` loads torchvision's weights (online, or from torch's download cache).
- ``timm:NAME``: ``timm.create_model`` (the optional extra ``pip install -e '.[timm]'``).
- ``path/to/file.py:make_model`` or ``package.module:make_model``: your own factory, called as
  ``make_model(num_classes=K, input_shape=(C, H, W))``; it must return an ``nn.Module``.

Such models normalise their inputs with ImageNet's mean and std (what their weights expect), and
name their classifier's input ``embedding`` and, where they have them, ``stage1``..``stage4``.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from workbench.errors import ModelError


@dataclass(frozen=True)
class FamilySpec:
    default_depth: int | None  # None: the family has no depth knob
    default_width: float | None  # None: the family has no width knob
    depth_choices: tuple[int, ...] | None  # None: any depth >= 1
    description: str


FAMILIES: dict[str, FamilySpec] = {
    "mlp": FamilySpec(2, 256, None, "multilayer perceptron: depth hidden layers of width units"),
    "cnn": FamilySpec(1, 16, None, "VGG-style CNN: 3 stages of depth conv blocks, width/2w/4w channels"),
    "resnet": FamilySpec(20, 16, (8, 14, 20, 32, 56), "CIFAR-style ResNet-depth, base width channels"),
    "mobilenet_v2": FamilySpec(None, 1.0, None, "torchvision MobileNetV2, width = width multiplier"),
    "resnet18": FamilySpec(None, None, None, "torchvision ResNet-18, small-input stem"),
    "torchvision": FamilySpec(None, None, None, "torchvision:NAME, any classification model of torchvision"),
    "timm": FamilySpec(None, None, None, "timm:NAME, any model of timm (optional extra)"),
    "factory": FamilySpec(None, None, None, "path/file.py:fn or package.module:fn, your own model factory"),
    # text (workbench.models.text): token ids in, built for the tokenizer's vocabulary
    "bag": FamilySpec(1, 128, None, "bag of embeddings: the mean of width-dim token embeddings, depth layers"),
    "textcnn": FamilySpec(1, 128, None, "CNN over tokens: width filters of widths 3, 4, 5, depth conv layers"),
    "bilstm": FamilySpec(1, 128, None, "bidirectional LSTM: depth layers of width units"),
    "transformer": FamilySpec(2, 128, None, "Transformer encoder: depth layers of width dims"),
    "hf": FamilySpec(None, None, None, "hf:FOLDER or hf:PACKAGE, a Hugging Face encoder with a new head (text extra)"),
    # language models (workbench.models.lm): token ids in, next-token logits out
    "llama": FamilySpec(4, 192, None, "LLaMA-style decoder: depth layers of width dims, --heads heads (width/64)"),
}
ZOO = ("mlp", "cnn", "resnet", "mobilenet_v2", "resnet18")  # built here, with their size knobs
EXTERNAL = ("torchvision", "timm", "factory", "hf")  # named by a spec string
TEXT_FAMILIES = ("bag", "textcnn", "bilstm", "transformer", "hf")  # take token ids (workbench.models.text)
LM_FAMILIES = ("llama",)  # next-token models built here (workbench.models.lm); hf: causal LMs too
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _whole(value, name: str) -> int:
    """`value` as an int if it is a finite whole number (16 or 16.0), else ModelError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value):
        raise ModelError(f"{name} must be a whole number, got {value}")
    return int(value)


@dataclass(frozen=True)
class ModelConfig:
    family: str = "cnn"  # one of FAMILIES
    depth: int | None = None  # layers (mlp), blocks per stage (cnn), total depth (resnet); None = default
    width: float | None = None  # units (mlp), base channels (cnn, resnet), multiplier (mobilenet_v2)
    pretrained: bool = False  # the library's own weights (resnet18, mobilenet_v2, torchvision:, timm:; online)
    name: str | None = None  # torchvision/timm model name, or the factory "file.py:fn" / "package.module:fn"
    heads: int | None = None  # llama: attention heads (None: width / 64)

    def __post_init__(self):
        if self.heads is not None:
            if self.family != "llama":
                raise ModelError(f"{self.family} has no heads knob (--heads is for llama students)")
            heads = _whole(self.heads, "heads")
            if not 1 <= heads <= 256:
                raise ModelError(f"heads must be between 1 and 256, got {self.heads}")
            object.__setattr__(self, "heads", heads)
        if self.family not in FAMILIES:
            raise ModelError(f"unknown model family {self.family!r}; choose one of {', '.join(ZOO)}, for text one of "
                             f"{', '.join(TEXT_FAMILIES[:-1])}, or a spec torchvision:NAME, timm:NAME, hf:FOLDER, "
                             "path/file.py:fn or package.module:fn")
        if self.family in EXTERNAL:
            if not self.name or not isinstance(self.name, str) or not self.name.strip():
                raise ModelError(f"a {self.family} model needs a name (e.g. {self.family}:"
                                 f"{'resnet50' if self.family != 'factory' else 'my_models.py:make_model'})")
            if self.family == "hf" and self.depth is not None and self.width is None:  # its first depth layers
                depth = _whole(self.depth, "depth")
                if not 1 <= depth <= 1000:
                    raise ModelError(f"depth must be between 1 and 1000, got {self.depth}")
                object.__setattr__(self, "depth", depth)
            elif self.depth is not None or self.width is not None:
                raise ModelError(f"{self.family}:{self.name} has no depth or width knob; pick another model instead")
            if self.pretrained and self.family == "factory":
                raise ModelError("pretrained weights come from torchvision or timm; for your own model, "
                                 "load a checkpoint with --init PATH")
            return
        if self.name is not None:
            raise ModelError(f"{self.family} is built here and takes no name")
        spec = FAMILIES[self.family]
        if self.depth is not None:
            if spec.default_depth is None:
                raise ModelError(f"{self.family} has no depth knob")
            depth = _whole(self.depth, "depth")
            if spec.depth_choices and depth not in spec.depth_choices:
                raise ModelError(f"{self.family} depth must be one of {spec.depth_choices}, got {self.depth}")
            if not 1 <= depth <= 1000:
                raise ModelError(f"depth must be between 1 and 1000, got {self.depth}")
            object.__setattr__(self, "depth", depth)
        if self.width is not None:
            if spec.default_width is None:
                raise ModelError(f"{self.family} has no width knob")
            if self.family == "mobilenet_v2":  # a multiplier
                if not (isinstance(self.width, (int, float)) and math.isfinite(self.width) and 0 < self.width <= 16):
                    raise ModelError(f"mobilenet_v2 width is a multiplier in (0, 16], got {self.width}")
            else:  # units or channels: a whole number; 16.0 and 16 are the same model
                width = _whole(self.width, "width")
                if not 1 <= width <= 65536:
                    raise ModelError(f"{self.family} width counts units or channels: a whole number between 1 and "
                                     f"65536, got {self.width}")
                object.__setattr__(self, "width", width)
        if self.pretrained and self.family not in ("resnet18", "mobilenet_v2", "hf"):
            raise ModelError("pretrained weights exist only for resnet18 and mobilenet_v2")

    @property
    def resolved_depth(self) -> int | None:
        return self.depth if self.depth is not None else FAMILIES[self.family].default_depth

    @property
    def resolved_width(self) -> float | None:
        return self.width if self.width is not None else FAMILIES[self.family].default_width

    def label(self) -> str:
        """A short human name, e.g. ``cnn(d=1, w=16)`` or ``torchvision:resnet50``."""
        if self.family in EXTERNAL:
            label = self.name if self.family == "factory" else f"{self.family}:{self.name}"
            return f"{label}(d={self.depth})" if self.depth is not None else label
        knobs = []
        if self.resolved_depth is not None:
            knobs.append(f"d={self.resolved_depth}")
        if self.resolved_width is not None:
            w = self.resolved_width
            knobs.append(f"w={int(w) if float(w).is_integer() else w}")
        if self.heads is not None:
            knobs.append(f"h={self.heads}")
        return f"{self.family}({', '.join(knobs)})" if knobs else self.family

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["heads"] is None:
            d.pop("heads")  # configs of models without heads read as they always did
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict) or "family" not in d:
            raise ModelError(f"a model config needs at least a 'family', got {d!r}")
        unknown = set(d) - {"family", "depth", "width", "pretrained", "name", "heads"}
        if unknown:
            raise ModelError(f"unknown model config keys {sorted(unknown)}")
        return cls(**d)


def parse_model(spec: str, depth=None, width=None, pretrained: bool = False) -> ModelConfig:
    """A model spec as typed on the command line: a zoo family (with knobs), ``torchvision:NAME``,
    ``timm:NAME``, ``path/to/file.py:fn`` or ``package.module:fn``.

    >>> parse_model("torchvision:resnet50").label(), parse_model("cnn", width=8).label()
    ('torchvision:resnet50', 'cnn(d=1, w=8)')
    """
    spec = (spec or "").strip()
    if not spec:
        raise ModelError("no model given: name a family (mlp, cnn, resnet, ...) or a spec like torchvision:resnet50")
    if ":" in spec:
        head, tail = spec.split(":", 1)
        if head in ("torchvision", "timm"):
            return ModelConfig(head, depth, width, pretrained, name=tail.strip())
        if head == "hf":  # a Hugging Face folder is its weights: fine-tuned from them
            return ModelConfig("hf", depth, width, True, name=tail.strip())
        if not tail.strip() or not re.fullmatch(r"[A-Za-z_]\w*", tail.strip()):
            raise ModelError(f"{spec!r} names no model: a factory spec is path/to/file.py:function or "
                             "package.module:function")
        return ModelConfig("factory", depth, width, pretrained, name=spec)
    return ModelConfig(spec, depth, width, pretrained)


# ---------------------------------------------------------------------------
# families

class MLP(nn.Module):
    def __init__(self, input_shape, num_classes, depth: int, width: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(input_shape)  # (C, H, W) pixels, or (F,) features
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.ReLU(inplace=True)]
            fan_in = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(fan_in, num_classes)
        self.stages = {f"hidden{i + 1}": f"body.{2 + 2 * i}" for i in range(depth)}
        self.stages["embedding"] = "body"

    def forward(self, x):  # (B, C, H, W) or (B, F) -> (B, K)
        return self.head(self.body(x))


def conv_bn(c_in, c_out, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class CNN(nn.Module):
    def __init__(self, input_shape, num_classes, depth: int, width: int):
        super().__init__()
        c = input_shape[0]
        widths = [width, 2 * width, 4 * width]
        stages = []
        for w in widths:
            blocks = [conv_bn(c if i == 0 else w, w) for i in range(depth)]
            stages.append(nn.Sequential(*blocks, nn.MaxPool2d(2, ceil_mode=True)))
            c = w
        self.features = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, num_classes)
        self.stages = {"stage1": "features.0", "stage2": "features.1", "stage3": "features.2",
                       "embedding": "pool"}

    def forward(self, x):
        return self.head(self.pool(self.features(x)))  # (B, K)


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:  # projection shortcut (option B)
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. 2016's CIFAR ResNet: 3 stages of (depth-2)/6 basic blocks each."""

    def __init__(self, input_shape, num_classes, depth: int, width: int):
        super().__init__()
        n = (depth - 2) // 6
        widths = [width, 2 * width, 4 * width]
        self.stem = conv_bn(input_shape[0], width)
        layers, c = [], width
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, num_classes)
        self.stages = {"stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "embedding": "pool"}

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(self.pool(x))


def _mobilenet_v2(input_shape, num_classes, width: float, pretrained: bool):
    import torchvision

    weights = "IMAGENET1K_V1" if pretrained else None
    if pretrained and width != 1.0:
        raise ModelError("pretrained mobilenet_v2 weights exist only for width 1.0")
    m = torchvision.models.mobilenet_v2(weights=weights, width_mult=width)
    stem_out = m.features[0][0].out_channels
    m.features[0][0] = nn.Conv2d(input_shape[0], stem_out, 3, 1, 1, bias=False)  # keep small images' resolution
    m.classifier[-1] = nn.Linear(m.classifier[-1].in_features, num_classes)
    m.stages = {"stage1": "features.3", "stage2": "features.6", "stage3": "features.13",
                "stage4": "features.18", "embedding": "classifier:in"}
    return m


def _resnet18(input_shape, num_classes, pretrained: bool):
    import torchvision

    m = torchvision.models.resnet18(weights="IMAGENET1K_V1" if pretrained else None)
    m.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False)  # small-input stem
    m.maxpool = nn.Identity()
    m.fc = nn.Linear(m.fc.in_features, num_classes)
    m.stages = {"stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "stage4": "layer4",
                "embedding": "avgpool"}
    return m


def build_model(config: ModelConfig, input_shape, num_classes: int, vocab: dict | None = None) -> nn.Module:
    """Build the model that `config` describes for images of `input_shape` (C, H, W), rows of (F,) features, or
    (L,) token ids of the tokenizer `vocab` describes (text: {"vocab_size", "pad_id", ...})."""
    if config.family in LM_FAMILIES or (config.family == "hf" and vocab and "seq_len" in vocab):
        from workbench.models.lm import build_lm_model  # transformers is an optional extra

        model = build_lm_model(config, tuple(input_shape), vocab)
        model.kdw_config, model.kdw_input_shape, model.kdw_num_classes = config, tuple(input_shape), model.vocab_size
        model.kdw_vocab = dict(vocab) if vocab else None
        return model
    if config.family in TEXT_FAMILIES:
        if num_classes < 2:
            raise ModelError(f"num_classes must be >= 2, got {num_classes}")
        from workbench.models.text import build_text_model  # transformers is an optional extra

        model = build_text_model(config, tuple(input_shape), num_classes, vocab)
        model.kdw_config, model.kdw_input_shape, model.kdw_num_classes = config, tuple(input_shape), num_classes
        model.kdw_vocab = dict(vocab) if vocab else None
        return model
    if len(input_shape) != 3 and config.family not in ("mlp", "factory"):
        raise ModelError(f"a {config.family} model takes images: input_shape must be (C, H, W), got "
                         f"{tuple(input_shape)}; use an mlp for rows of features")
    if num_classes < 2:
        raise ModelError(f"num_classes must be >= 2, got {num_classes}")
    d, w = config.resolved_depth, config.resolved_width
    if config.family == "mlp":
        model = MLP(input_shape, num_classes, d, int(w))
    elif config.family == "cnn":
        model = CNN(input_shape, num_classes, d, int(w))
    elif config.family == "resnet":
        model = CifarResNet(input_shape, num_classes, d, int(w))
    elif config.family == "mobilenet_v2":
        model = _mobilenet_v2(input_shape, num_classes, float(w), config.pretrained)
    elif config.family == "resnet18":
        model = _resnet18(input_shape, num_classes, config.pretrained)
    else:
        model = _external(config, tuple(input_shape), num_classes)
    model.kdw_config = config  # so helpers can recover what was built
    model.kdw_input_shape = tuple(input_shape)
    model.kdw_num_classes = num_classes
    if config.family in EXTERNAL:
        pre = model_preprocessing(config, model)
        model.kdw_mean, model.kdw_std = tuple(pre["mean"][:input_shape[0]]), tuple(pre["std"][:input_shape[0]])
        if input_shape[0] not in (1, 3):
            model.kdw_mean, model.kdw_std = (0.5,) * input_shape[0], (0.25,) * input_shape[0]
        model.kdw_native_size = pre["input_size"]  # what its weights were trained at, for the read-outs
    return model


def model_preprocessing(config: ModelConfig, model: nn.Module | None = None) -> dict:
    """The normalisation and input size a library's model expects, from its own config: timm's
    `resolve_model_data_config` (its pretrained_cfg), torchvision's `weights.transforms()`. {"mean", "std",
    "input_size" (the square side, or None), "source"}; ImageNet's statistics where a model declares none (a factory
    of yours, a torchvision model without weights)."""
    out = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": None, "source": "ImageNet statistics"}
    try:
        if config.family == "timm" and model is not None:
            import timm

            cfg = timm.data.resolve_model_data_config(model)
            return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]), "input_size": int(cfg["input_size"][-1]),
                    "source": f"timm's data config of {config.name}"}
        if config.family == "torchvision":
            import torchvision

            preset = torchvision.models.get_model_weights(config.name).DEFAULT.transforms()
            return {"mean": tuple(preset.mean), "std": tuple(preset.std), "input_size": int(preset.crop_size[0]),
                    "source": f"torchvision's {config.name} weights transforms"}
    except Exception:  # a model without declared weights or data config: ImageNet's statistics
        pass
    return out


def _external(config: ModelConfig, input_shape: tuple, num_classes: int) -> nn.Module:
    """A torchvision, timm or user-factory model, its classifier sized to `num_classes`."""
    if config.family == "torchvision":
        model = _torchvision(config, num_classes)
    elif config.family == "timm":
        try:
            import timm
        except ImportError:
            raise ModelError("timm models need the optional package timm: pip install -e '.[timm]' "
                             "(or pip install 'kd-workbench[timm]')") from None
        if config.name not in timm.list_models(pretrained=False) and not timm.is_model(config.name):
            raise ModelError(f"timm has no model {config.name!r}; `python -c \"import timm; "
                             f"print(timm.list_models('*{config.name[:6]}*'))\"` lists similar names")
        try:
            model = timm.create_model(config.name, pretrained=config.pretrained, num_classes=num_classes,
                                      in_chans=input_shape[0])
        except Exception as e:
            raise ModelError(_pretrained_hint(config, e) if config.pretrained else
                             f"timm could not build {config.name}: {e}") from None
    else:
        model = _from_factory(config.name, num_classes, input_shape)
    model.stages = default_stages(model)
    return model


def classification_models() -> list[str]:
    """torchvision's image classifiers: the models of `torchvision.models` itself, without its detection,
    segmentation, video, optical-flow and quantized submodules."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _torchvision(config: ModelConfig, num_classes: int) -> nn.Module:
    import torchvision

    if config.name not in classification_models():
        raise ModelError(f"torchvision has no classification model {config.name!r} (detection, segmentation, video "
                         "and optical-flow models do not classify images); its classification models include "
                         "resnet18, resnet50, mobilenet_v2, efficientnet_b0, vit_b_16 "
                         "(torchvision.models.list_models() lists them all)")
    if config.pretrained:
        try:
            model = torchvision.models.get_model(config.name, weights="DEFAULT")
        except Exception as e:  # offline: say which file to fetch and where to put it
            raise ModelError(_pretrained_hint(config, e)) from None
        replace_head(model, num_classes)
        return model
    try:
        return torchvision.models.get_model(config.name, weights=None, num_classes=num_classes)
    except Exception as e:
        raise ModelError(f"torchvision could not build {config.name}: {e}") from None


def _pretrained_hint(config: ModelConfig, error: Exception) -> str:
    """What to do when a library's pretrained weights cannot be fetched (offline)."""
    if config.family == "torchvision":
        import torchvision

        try:
            url = torchvision.models.get_model_weights(config.name).DEFAULT.url
            cache = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
            return (f"torchvision's weights for {config.name} could not be fetched ({type(error).__name__}); this "
                    f"machine may be offline. Download {url} to {cache} and run again, or pass the file with "
                    "--init PATH")
        except Exception:
            pass
    return (f"the pretrained weights of {config.label()} could not be fetched ({type(error).__name__}: {error}); "
            "this machine may be offline. Download them elsewhere and pass the file with --init PATH")


def _from_factory(spec: str, num_classes: int, input_shape: tuple) -> nn.Module:
    """Call a user's factory `path/to/file.py:fn` or `package.module:fn` with num_classes and input_shape."""
    import importlib
    import importlib.util

    where, fn_name = spec.rsplit(":", 1)
    try:
        if where.endswith(".py") or "/" in where or os.sep in where:
            path = Path(where).expanduser()
            if not path.is_file():
                raise ModelError(f"model factory file {path} does not exist")
            if path.suffix != ".py":
                raise ModelError(f"a model factory is a Python file (file.py:function) or a module "
                                 f"(package.module:function); {path} is not a .py file")
            module_name = "kdw_factory_" + re.sub(r"\W", "_", str(path.resolve()))
            mod_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"could not import the model factory {where}: {type(e).__name__}: {e}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ModelError(f"{where} has no function {fn_name!r}")
    _check_factory(fn, spec)
    try:
        model = fn(num_classes=num_classes, input_shape=input_shape)
    except Exception as e:
        raise ModelError(f"the model factory {spec} raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"the model factory {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _check_factory(fn, spec: str) -> None:
    """Refuse what is not a model factory before calling it: a Python function (or an nn.Module class) that takes
    `num_classes` and `input_shape` by name. A builtin (`os:system`) or any other callable is never called."""
    import inspect

    if isinstance(fn, type):
        if not issubclass(fn, nn.Module):
            raise ModelError(f"{spec} is a class but not a torch.nn.Module, so it is not a model factory")
        target = fn.__init__
    elif inspect.isfunction(fn):
        target = fn
    else:
        raise ModelError(f"{spec} is a {type(fn).__name__}, not a model factory: name a Python function "
                         "make_model(num_classes, input_shape) that returns an nn.Module")
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    missing = [n for n in ("num_classes", "input_shape") if n not in named]
    if missing:
        raise ModelError(f"{spec} is not a model factory: it takes no {' or '.join(missing)} argument (a factory "
                         "is make_model(num_classes, input_shape) returning an nn.Module)")


def classifier_path(model: nn.Module) -> str | None:
    """The module path of the model's classifier: its last nn.Linear (None if it has none)."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    return last


def replace_head(model: nn.Module, num_classes: int) -> str | None:
    """Give the classifier `num_classes` outputs (a new, freshly initialised layer); returns its path."""
    path = classifier_path(model)
    if path is None:
        raise ModelError(f"{type(model).__name__} has no linear classifier whose classes could be changed")
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    old = model.get_submodule(path)
    if old.out_features == num_classes:
        return None
    setattr(parent, path.rsplit(".", 1)[-1], nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return path


def default_stages(model: nn.Module) -> dict[str, str]:
    """Feature names for any model: `embedding` (the classifier's input) and, for ResNet-like models,
    stage1..stage4 (layer1..layer4); feature methods can also name any module path."""
    names = dict(model.named_modules())
    stages = {f"stage{i}": f"layer{i}" for i in range(1, 5) if f"layer{i}" in names}
    head = classifier_path(model)
    if head:
        stages["embedding"] = f"{head}:in"
    return stages


def _collapsed_share(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(logits, the share of the model's k×k convolutions, k > 1, that see a 1×1 feature map) on input x."""
    seen = []

    def hook(m, inp):
        seen.append(inp[0].shape[-1] == 1 and inp[0].shape[-2] == 1)

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1]
    handles = [m.register_forward_pre_hook(hook) for m in convs]
    try:
        with torch.inference_mode():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, (sum(seen) / len(seen) if seen else 0.0)


MAX_COLLAPSED = 0.25  # more than this share of a net's spatial convolutions on 1×1 maps: the image is too small


def check_input(model: nn.Module, input_shape) -> None:
    """ModelError in one sentence unless `model` takes one image of `input_shape` and returns (1, K) logits.

    An image so small that much of the network only sees 1×1 feature maps (ResNet-50 at 8×8) is refused
    too, with the smallest size that works.
    """
    label = model.kdw_config.label() if hasattr(model, "kdw_config") else type(model).__name__
    C, H, W = input_shape
    p = next(model.parameters(), None)
    device = p.device if p is not None else "cpu"
    was_training = model.training
    model.eval()
    try:
        out, collapsed = _collapsed_share(model, torch.zeros(1, C, H, W, device=device))
    except Exception as e:  # models fail on a wrong input in many ways (RuntimeError, ValueError, AssertionError)
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        wants = _first_conv_channels(model)
        if wants is not None and wants != C:  # said in our words: PyTorch's own text names weight shapes
            raise ModelError(f"{label} takes {wants}-channel images and these have {C}; pass --channels {wants} "
                             f"to {'use grey images as colour' if wants == 3 else 'convert the images'}, or pick a "
                             "model built for this data") from None
        raise ModelError(f"{label} cannot take {C}×{H}×{W} images ({msg}); they may be too small for it: "
                         f"pass a larger --image-size{_size_hint(model, C)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        raise ModelError(f"{label} must return logits of shape (batch, classes), returned "
                         f"{type(out).__name__}{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}")
    if collapsed > MAX_COLLAPSED:
        raise ModelError(f"{H}×{W} images are too small for {label}: {100 * collapsed:.0f}% of its convolutions "
                         f"would see a 1×1 feature map; pass a larger --image-size{_size_hint(model, C)}")


def _first_conv_channels(model: nn.Module) -> int | None:
    """The input channels of a model's first convolution, or None without one."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


def _size_hint(model: nn.Module, channels: int) -> str:
    """' (at least N works)' for the smallest usual size the model takes, or ''."""
    p = next(model.parameters(), None)
    was_training = model.training
    model.eval()
    try:
        for size in (16, 32, 64, 96, 128, 224):
            try:
                _, collapsed = _collapsed_share(model, torch.zeros(1, channels, size, size,
                                                                   device=p.device if p is not None else "cpu"))
            except Exception:
                continue
            if collapsed <= MAX_COLLAPSED:
                return f" (at least {size} works)"
    finally:
        model.train(was_training)
    return ""


def sample_input(model: nn.Module, input_shape, batch: int = 1, random: bool = False) -> torch.Tensor:
    """A batch of inputs `model` takes, on its device: float images or features (zeros, or normal noise with
    `random`), or token ids that are not padding for a text model. For probing, FLOPs, timing and export."""
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    if getattr(model, "kdw_vocab", None) is not None or getattr(model, "kdw_config", None) is not None \
            and model.kdw_config.family in TEXT_FAMILIES:
        from workbench.models.text import sample_ids

        return sample_ids(model, input_shape, batch, device)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    make = torch.randn if random else torch.zeros
    return make(batch, *input_shape, device=device, dtype=dtype)


def count_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def is_convnet(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


# ---------------------------------------------------------------------------
# checkpoints: safetensors with the model's config in the header

def state_dict_fp32(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous fp32 CPU copies of the weights (buffers included), as saved to disk."""
    out = {}
    tied = set(getattr(model, "kdw_tied", ()))  # weights that are another one (a tied output embedding)
    for k, v in model.state_dict().items():
        if k in tied:
            continue
        v = v.detach().to("cpu")
        out[k] = (v.float() if v.is_floating_point() else v).contiguous().clone()
    return out


def checkpoint_metadata(model: nn.Module, **extra) -> dict[str, str]:
    meta = {"kdw_model": json.dumps(model.kdw_config.to_dict()),
            "kdw_input_shape": json.dumps(list(model.kdw_input_shape)),
            "kdw_num_classes": str(model.kdw_num_classes)}
    for key in ("kdw_mean", "kdw_std"):  # the normalisation the model expects, where it is not the data set's
        if getattr(model, key, None) is not None:
            meta[key] = json.dumps(list(getattr(model, key)))
    if getattr(model, "kdw_vocab", None):  # a text model's tokenizer
        meta["kdw_vocab"] = json.dumps(model.kdw_vocab)
    meta.update({f"kdw_{k}": v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return meta


def save_checkpoint(model: nn.Module, path, **extra) -> int:
    """Save fp32 weights and the model config as safetensors; returns the file's size in bytes."""
    from safetensors.torch import save_file

    save_file(state_dict_fp32(model), str(path), metadata=checkpoint_metadata(model, **extra))
    return os.path.getsize(path)


def checkpoint_bytes(model: nn.Module) -> bytes:
    """The bytes `save_checkpoint` would write (for size figures and downloads)."""
    from safetensors.torch import save

    return save(state_dict_fp32(model), metadata=checkpoint_metadata(model))


MAX_CHECKPOINT_BYTES = 2_000_000_000  # 2 GB: any model this workbench trains, far from exhausting memory


def _where(path_or_bytes) -> str:
    return "the uploaded file" if isinstance(path_or_bytes, (bytes, bytearray)) else str(path_or_bytes)


def checkpoint_header(path_or_bytes) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """({tensor name: shape}, metadata) from a safetensors header alone, without reading any tensor.

    A ModelError says what is wrong: a missing file, a file over MAX_CHECKPOINT_BYTES, or a header that
    is not safetensors (a pickled PyTorch file, say).
    """
    where = _where(path_or_bytes)
    try:
        if isinstance(path_or_bytes, (bytes, bytearray)):
            size, head = len(path_or_bytes), bytes(path_or_bytes[:8])
        else:
            size = os.path.getsize(path_or_bytes)
            with open(path_or_bytes, "rb") as f:
                head = f.read(8)
        if size > MAX_CHECKPOINT_BYTES:
            raise ModelError(f"{where} is {size / 1e9:.1f} GB, over the {MAX_CHECKPOINT_BYTES / 1e9:.0f} GB limit "
                             "for a checkpoint")
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(size - 8, 100_000_000):
            raise ValueError("no safetensors header")
        if isinstance(path_or_bytes, (bytes, bytearray)):
            raw = bytes(path_or_bytes[8:8 + n])
        else:
            with open(path_or_bytes, "rb") as f:
                f.seek(8)
                raw = f.read(n)
        header = json.loads(raw)
        meta = header.pop("__metadata__", None) or {}
        shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in header.items()}
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a table")
    except FileNotFoundError:
        raise ModelError(f"checkpoint {where} does not exist") from None
    except ModelError:
        raise
    except Exception as e:  # a foreign or broken header: say so, never guess
        raise ModelError(f"{where} is not a valid safetensors checkpoint ({type(e).__name__}: {e}). "
                         "KD Workbench loads weights only from .safetensors files.") from None
    return shapes, {str(k): str(v) for k, v in meta.items()}


def read_checkpoint(path_or_bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, or a ModelError saying what is wrong with it."""
    from safetensors import safe_open
    from safetensors.torch import load

    checkpoint_header(path_or_bytes)  # size cap and header check before any tensor is read
    try:
        if isinstance(path_or_bytes, (bytes, bytearray)):
            tensors = load(bytes(path_or_bytes))
            meta = checkpoint_header(path_or_bytes)[1]
        else:
            with safe_open(str(path_or_bytes), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a bad file
        raise ModelError(f"{_where(path_or_bytes)} is not a valid safetensors checkpoint ({type(e).__name__}: {e}). "
                         "KD Workbench loads weights only from .safetensors files.") from None
    return tensors, meta


def _meta_json(meta: dict, key: str, where: str):
    try:
        return json.loads(meta[key])
    except (json.JSONDecodeError, TypeError):
        raise ModelError(f"metadata key {key} of {where} is not valid JSON: {meta[key]!r}") from None


def _meta_int(value, key: str, where: str, low: int, high: int) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        f = float("nan")
    if not (math.isfinite(f) and f == int(f) and low <= f <= high):  # a 5,000-digit number reads as inf
        raise ModelError(f"metadata key {key} of {where} must be a whole number in [{low}, {high}], got {value!r}")
    return int(f)


def _check_shapes(model: nn.Module, shapes: dict[str, tuple], label: str) -> None:
    """ModelError listing the first keys that do not fit (missing, unexpected, or of another shape)."""
    tied = set(getattr(model, "kdw_tied", ()))
    want = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in tied}
    problems = [f"{k}: expected {want[k]}, found {shapes[k]}" for k in want if k in shapes and shapes[k] != want[k]]
    problems += [f"{k}: missing" for k in want if k not in shapes]
    problems += [f"{k}: unexpected" for k in shapes if k not in want]
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise ModelError(f"the weights do not fit {label}: " + "; ".join(problems[:4]) + more)


def load_checkpoint(path_or_bytes, config: ModelConfig | None = None, input_shape=None,
                    num_classes: int | None = None, allow_factory: bool = False,
                    trust_hint: str = "pass --trust-factory if you trust the file") -> tuple[nn.Module, dict[str, str]]:
    """Rebuild a model from a safetensors checkpoint.

    The config, input shape and class count come from the file's metadata, or from the
    arguments for a file saved elsewhere. The header's tensor shapes are checked against the
    model built on the ``meta`` device (no memory) before anything is allocated, so a small
    file that claims a huge model is refused at once. A checkpoint whose model comes from a user's
    factory runs that factory's code, so it loads only with `allow_factory` (a run of your own store, or a
    file the user trusts with --trust-factory; never an upload); otherwise it is refused with `trust_hint`.
    Returns (model in eval mode, metadata).
    """
    where = _where(path_or_bytes)
    shapes, meta = checkpoint_header(path_or_bytes)
    if config is None:
        if "kdw_model" not in meta:
            raise ModelError("the checkpoint has no model config in its metadata; "
                             "give the config (family, depth, width) alongside it")
        try:
            config = ModelConfig.from_dict(_meta_json(meta, "kdw_model", where))
        except (ModelError, TypeError) as e:
            raise ModelError(f"metadata key kdw_model of {where} is not a model config: {e}") from None
    config = replace(config, pretrained=False)  # the weights are the file's; never fetch others
    if config.family == "factory" and not allow_factory:
        raise ModelError(f"{where} names a model built by code ({config.name}), and loading it would run that "
                         f"code; {trust_hint}")
    if input_shape is None and "kdw_input_shape" in meta:
        input_shape = _meta_json(meta, "kdw_input_shape", where)
    if num_classes is None and "kdw_num_classes" in meta:
        num_classes = _meta_int(meta["kdw_num_classes"], "kdw_num_classes", where, 1, 1_000_000)
    if input_shape is None or num_classes is None:
        raise ModelError("the checkpoint does not say its input shape and class count; give them alongside it")
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) not in (1, 3):
        raise ModelError(f"metadata key kdw_input_shape of {where} must be [channels, height, width] or "
                         f"[features], got {input_shape!r}")
    input_shape = tuple(_meta_int(d, "kdw_input_shape", where, 1, 1_000_000 if len(input_shape) == 1 else 8192)
                        for d in input_shape)
    num_classes = _meta_int(num_classes, "kdw_num_classes", where, 1, 1_000_000)
    label = f"{config.label()} for input {input_shape} and {num_classes} classes"
    vocab = _meta_vocab(meta, where) if "kdw_vocab" in meta else None
    with torch.device("meta"):  # shapes only: a forged header cannot make us allocate a huge model
        skeleton = build_model(config, input_shape, num_classes, vocab)
    _check_shapes(skeleton, shapes, label)
    tensors, meta = read_checkpoint(path_or_bytes)
    model = build_model(config, input_shape, num_classes, vocab)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        missing = set(missing) - set(getattr(model, "kdw_tied", ()))
        if missing or unexpected:
            raise RuntimeError(f"missing keys {sorted(missing)[:3]}, unexpected keys {sorted(unexpected)[:3]}")
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelError(f"the weights do not fit {label}: {first}") from None
    for key in ("kdw_mean", "kdw_std"):  # the normalisation the model was trained with
        if key in meta:
            values = _meta_json(meta, key, where)
            if isinstance(values, list) and len(values) == input_shape[0]:
                setattr(model, key, tuple(float(v) for v in values))
    return model.eval(), meta


def _meta_vocab(meta: dict, where: str) -> dict:
    """A text model's tokenizer description from checkpoint metadata, its numbers checked."""
    vocab = _meta_json(meta, "kdw_vocab", where)
    if not isinstance(vocab, dict) or not {"vocab_size", "pad_id"} <= set(vocab):
        raise ModelError(f"metadata key kdw_vocab of {where} must give vocab_size and pad_id")
    vocab["vocab_size"] = _meta_int(vocab["vocab_size"], "kdw_vocab", where, 2, 10_000_000)
    vocab["pad_id"] = _meta_int(vocab["pad_id"], "kdw_vocab", where, 0, vocab["vocab_size"] - 1)
    return vocab


def load_weights(model: nn.Module, path) -> dict:
    """Initialise `model` from a file: .safetensors, or a PyTorch state dict (.pth/.pt, `weights_only`).

    A classifier whose class count differs keeps the model's own fresh head (the file's is dropped); any
    other key that does not fit is an error listing the first few, with the expected and found shapes.
    Returns {"source", "loaded", "new_layers"}: what the run's summary and the report show.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        tensors, _ = read_checkpoint(path)
    else:
        try:
            size = path.stat().st_size
            if size > MAX_CHECKPOINT_BYTES:
                raise ModelError(f"{path} is {size / 1e9:.1f} GB, over the {MAX_CHECKPOINT_BYTES / 1e9:.0f} GB limit")
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        except ModelError:
            raise
        except Exception as e:
            text = str(e)
            if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
                raise ModelError(f"{path} holds a pickled model, not a state dict, and pickles are never loaded "
                                 "(they can run code). Save the weights with torch.save(model.state_dict(), PATH) "
                                 "and pass that file") from None
            raise ModelError(f"{path} is not a PyTorch state dict or a safetensors file ({type(e).__name__}: "
                             f"{text.splitlines()[0] if text else ''})") from None
        for key in ("state_dict", "model", "model_state_dict"):  # common wrappers of training checkpoints
            if isinstance(tensors, dict) and isinstance(tensors.get(key), dict):
                tensors = tensors[key]
        if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
            raise ModelError(f"{path} does not hold a state dict (a mapping of names to tensors)")
        tensors = {k[7:] if k.startswith("module.") else k: v for k, v in tensors.items()}  # DataParallel saves
    want = model.state_dict()
    head = classifier_path(model)
    head_keys = {f"{head}.weight", f"{head}.bias"} if head else set()
    new = sorted(k for k in head_keys & set(want) if k in tensors and tuple(tensors[k].shape) != tuple(want[k].shape))
    problems = [f"{k}: expected {tuple(want[k].shape)}, found {tuple(tensors[k].shape)}" for k in want
                if k in tensors and k not in new and tuple(tensors[k].shape) != tuple(want[k].shape)]
    problems += [f"{k}: missing" for k in want if k not in tensors and k not in head_keys]
    problems += [f"{k}: unexpected" for k in tensors if k not in want]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ModelError(f"the weights in {path} do not fit {getattr(model, 'kdw_config', None) and model.kdw_config.label() or type(model).__name__}: "
                         + "; ".join(problems[:5]) + more)
    keep = {k: v for k, v in tensors.items() if k in want and k not in new}
    missing_head = sorted(k for k in head_keys & set(want) if k not in tensors)
    model.load_state_dict({**want, **{k: v.to(want[k].dtype) for k, v in keep.items()}}, strict=True)
    new_layers = sorted({k.rsplit(".", 1)[0] for k in new + missing_head})
    return {"source": str(path), "loaded": len(keep), "new_layers": new_layers}
