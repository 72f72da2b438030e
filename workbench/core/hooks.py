"""Forward hooks that capture intermediate features by name, without editing the model.

A name is one of the model's natural stages (``model.stages``, e.g. ``"stage2"`` or
``"embedding"`` for the zoo's families) or a module path (``"layer2.0.conv1"``, as in
``model.named_modules()``), which works for any user-defined ``nn.Module``. A path ending
in ``":in"`` captures the module's input instead of its output.

    hooks = FeatureHooks(model, ["stage2", "embedding"])
    hooks.add()
    logits = model(x)
    feats = hooks.pop()      # {"stage2": (B, C, H, W), "embedding": (B, D)}
    hooks.remove()

or, scoped: ``with FeatureHooks(model, names) as hooks: ...``.
"""

from __future__ import annotations

import torch
from torch import nn


def resolve(model: nn.Module, name: str) -> tuple[str, bool]:
    """(module path, capture input?) for a stage name or module path; ValueError if there is none."""
    path = getattr(model, "stages", {}).get(name, name)
    want_input = path.endswith(":in")
    if want_input:
        path = path[:-3]
    modules = dict(model.named_modules())
    if path not in modules:
        stages = sorted(getattr(model, "stages", {}))
        some = [n for n in modules if n][:12]
        raise ValueError(f"no submodule {name!r} in {type(model).__name__}; its stages are {stages or 'not named'}, "
                         f"and module paths look like {some}")
    return path, want_input


class FeatureHooks:
    """Capture the outputs (or inputs) of named submodules on each forward pass."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.model = model
        self.names = list(names)
        self.targets = {n: resolve(model, n) for n in self.names}
        self._handles: list = []
        self._store: dict[str, torch.Tensor] = {}

    def add(self) -> "FeatureHooks":
        if self._handles:
            return self
        modules = dict(self.model.named_modules())
        for name, (path, want_input) in self.targets.items():
            def hook(module, inputs, output, name=name, want_input=want_input):
                value = inputs[0] if want_input else output
                if isinstance(value, tuple):  # a layer that returns (hidden states, attentions, ...)
                    value = value[0]
                self._store[name] = value.flatten(1) if name == "embedding" and value.ndim > 2 else value
            self._handles.append(modules[path].register_forward_hook(hook))
        return self

    def pop(self) -> dict[str, torch.Tensor]:
        """The features captured since the last pop, then forget them."""
        missing = [n for n in self.names if n not in self._store]
        if missing:
            raise RuntimeError(f"no features captured for {missing}: run a forward pass between add() and pop()")
        out, self._store = self._store, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._store = {}

    def __enter__(self) -> "FeatureHooks":
        return self.add()

    def __exit__(self, *exc) -> None:
        self.remove()


def feature_shapes(model: nn.Module, names: list[str], input_shape, device="cpu") -> dict[str, tuple]:
    """Shapes (without the batch) of the named features, from one forward pass on zeros."""
    was_training = model.training
    model.eval()
    with FeatureHooks(model, names) as hooks, torch.no_grad():
        p = next(model.parameters())
        if getattr(model, "kdw_vocab", None) is not None:  # a text model: token ids (1 is never padding here)
            x = torch.full((2, *input_shape), (int(model.kdw_vocab["pad_id"]) + 1) % int(model.kdw_vocab["vocab_size"]),
                           dtype=torch.long, device=p.device)
        else:
            x = torch.zeros(2, *input_shape, device=p.device, dtype=p.dtype)
        model(x)
        shapes = {k: tuple(v.shape[1:]) for k, v in hooks.pop().items()}
    model.train(was_training)
    return shapes
