"""The workbench's errors: one base class, and one sentence for the user from any exception.

Every error the workbench raises on purpose derives from `WorkbenchError` and carries a message that
says what was wrong and how to fix it; `friendly_error` shows that message alone. Anything else is
shown with its type, on one line, never as a traceback.
"""

from __future__ import annotations


class WorkbenchError(RuntimeError):
    """An error whose message is written for the user: what was wrong and how to fix it."""


class DataError(WorkbenchError):
    """A data set is missing or malformed; the message says how to fix it."""


class ModelError(WorkbenchError, ValueError):
    """A model spec, checkpoint or input does not work; the message says why."""


class RunStoreError(WorkbenchError):
    """The run store cannot be used as asked; the message says why and how to fix it."""


class TrainingError(WorkbenchError):
    """Training stopped (non-finite loss, bad setup); the message says why."""


class Diverged(TrainingError):
    """The loss became NaN or infinite: the run is marked diverged, not failed, and says what to try."""


class CheckpointDamaged(TrainingError):
    """A resume state (checkpoint.pt) that cannot be used: one sentence naming the file and what is wrong."""

    def __init__(self, path, why: str):
        super().__init__(f"checkpoint {path} is damaged: {why}; start the run again, or delete the checkpoint")


class DeployError(WorkbenchError):
    """An export, quantization or pruning step cannot be done; the message says why."""


class RunFailed(WorkbenchError):
    """A run that was waited for ended failed; the message is its error."""


class MissingExtra(WorkbenchError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, module: str, extra: str, purpose: str = ""):
        self.module, self.extra = module, extra
        what = f" for {purpose}" if purpose else ""
        super().__init__(f"{module} is needed{what}: install it with pip install 'kd-workbench[{extra}]' "
                         f"(make setup installs every extra)")


def require(module: str, extra: str, purpose: str = ""):
    """Import an optional dependency, or raise MissingExtra naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(module, extra, purpose) from e


def friendly_error(e: BaseException) -> str:
    """One line for the user: the message of a WorkbenchError or ValueError, else type and message."""
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.errno == 28:  # ENOSPC
        where = f" ({e.filename})" if e.filename else ""
        return f"disk full{where}: free some space, then resume or start the run again"
    if isinstance(e, MemoryError):
        return "out of memory: use a smaller batch size or model"
    if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
        return f"the GPU ran out of memory ({msg.splitlines()[0]}); use a smaller batch size or model"
    first = msg.splitlines()[0]
    return first if isinstance(e, (WorkbenchError, ValueError)) else f"{type(e).__name__}: {first}"
