"""What every training loop here shares: device and precision choice, loss scaling, the learning-rate schedule,
seeding, Ctrl-C / SIGTERM handling, and what a run returns (with its exit code). Task-specific steps (losses,
evaluation) live with their task."""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .distributed import DistInfo
from .run_config import RunPlan

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def select_device(name: str, info: DistInfo) -> torch.device:
    """``auto``: this process's GPU under torchrun when CUDA is available, else the CPU."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is available (use --device cpu)")
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``--amp bf16|fp16`` (a no-op for ``none``)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def make_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """Loss scaling is needed for fp16 only (bf16 has float32's range); a disabled scaler is a pass-through."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak lr at optimizer step ``step``: linear warmup, then cosine to 0 (or constant)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, plan: RunPlan, name: str = "sgd", nesterov: bool = False) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum if ``nesterov`` and the plan has momentum) or AdamW (``name``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=plan.lr, weight_decay=plan.weight_decay)
    return torch.optim.SGD(params, lr=plan.lr, momentum=plan.momentum, nesterov=nesterov and plan.momentum > 0,
                           weight_decay=plan.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, plan: RunPlan, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule (:func:`lr_factor`); its state is the step count, so it resumes exactly."""
    total = plan.epochs * steps_per_epoch
    warmup = round(plan.warmup_epochs * steps_per_epoch)
    schedule = plan.schedule

    def factor(step: int) -> float:
        return lr_factor(step, total, warmup, schedule)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """``batch`` (a tensor, or lists / tuples / dicts of them and other values) with every tensor moved to
    ``device``; 4-D tensors (image batches ``(N, C, H, W)``) made channels_last if asked, 5-D ones (clips
    ``(N, C, T, H, W)``) channels_last_3d."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        layout = {4: torch.channels_last, 5: torch.channels_last_3d}.get(batch.dim()) if channels_last else None
        return batch if layout is None else batch.contiguous(memory_format=layout)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(item, device, channels_last) for item in batch)
    if isinstance(batch, dict):
        return {key: to_device(value, device, channels_last) for key, value in batch.items()}
    return batch


class StopFlag:
    """SIGINT / SIGTERM handler: the first signal asks the loop to stop after the current step (and save); a second
    one aborts. Schedulers and clusters (SLURM, Kubernetes, torchrun's agent) stop jobs with SIGTERM, so it saves as
    Ctrl-C does; ``signum`` records which signal asked (None: none, or a stop requested in code)."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))

    def __init__(self, announce: bool) -> None:
        self.requested = False
        self.announce = announce
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def request(self) -> None:
        self.requested = True

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            if signum == getattr(signal, "SIGTERM", None):
                raise SystemExit(128 + signum)  # what the default action reports, without saving
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        if self.announce:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\n{name}: stopping after this step and saving a checkpoint ({name} again to abort)",
                  file=sys.stderr, flush=True)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handler) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)  # None: set outside Python
        self._previous = {}


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # finished | interrupted
    metrics: dict[str, Any]
    stop_signal: int | None = None  # the signal that interrupted the run (SIGINT, SIGTERM), if one did

    @property
    def exit_code(self) -> int:
        """What the command exits with: 0 when finished; when interrupted, the shell's 128 + the signal (130 for
        Ctrl-C, 143 for SIGTERM; 130 for a stop requested in code)."""
        if self.status != "interrupted":
            return 0
        return 128 + (self.stop_signal or signal.SIGINT)


def detach_worker(worker_id: int) -> None:
    """A data-loader worker's ``worker_init_fn``: the worker leaves its parent's process group, so that a signal
    sent to the group (Ctrl-C in a terminal, SIGTERM from torchrun's agent or ``kill -TERM -PGID``) reaches only
    the training process, which stops, saves and then ends its workers itself; otherwise the signal kills the
    workers and the save fails ("DataLoader worker is killed by signal: Terminated"). The worker still ends
    with its parent."""
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)


def compile_module(module: nn.Module, backend: str) -> nn.Module:
    """``module`` compiled by ``torch.compile`` with ``backend`` (an ``OptimizedModule``, itself a module)."""
    compiled = torch.compile(module, backend=backend)
    assert isinstance(compiled, nn.Module)  # torch.compile of a module is a module (its stub says a callable)
    return compiled


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """Every BatchNorm of ``model`` replaced by SyncBatchNorm (statistics over all processes; CUDA only)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""
