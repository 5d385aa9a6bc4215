"""Exponential moving average of a model's weights (``train.ema``).

Semantics of timm's ``ModelEmaV3`` (timm 1.0, ``timm/utils/model_ema.py``), written here in
our style and checked against it (apps/trainer/tests/test_ema.py: equal bit for bit, with
and without warmup and buffers):

* the EMA is a copy of the model, kept in eval mode, without gradients;
* :meth:`ModelEma.update` after each optimizer step with ``step`` = the number of optimizer
  steps done (timm's train.py passes ``num_updates``, 1-based): the decay of that update is
  0 while ``step <= update_after_step + 1`` (the EMA becomes a copy of the model), then
  ``decay``; with ``warmup`` it is ``1 - (1 + n / warmup_gamma) ** -warmup_power`` with
  ``n = step - update_after_step - 1``, clamped to ``[min_decay, decay]``;
* ``ema <- ema + (1 - decay) * (model - ema)`` (``torch.lerp``) for every floating-point
  entry of the state dict, parameters and buffers alike (BN running statistics are averaged);
  integer buffers (``num_batches_tracked``) are copied. ``exclude_buffers=True`` averages the
  parameters only and copies every buffer (timm's ``exclude_buffers``).

What differs from timm: the EMA lives on the model's device in the model's dtype (timm's
``device``/``dtype`` options and bf16 stochastic rounding are not offered: the trainer keeps
fp32 weights under mixed precision); entries are matched by name, not by position.

mmengine's ``ExponentialMovingAverage`` (``momentum = 1 - decay``, buffers copied unless
``update_buffers``) is the same average without warmup; mmengine's first update copies too.

In distributed training every process updates its own EMA from its own (DDP-synchronised)
parameters, so the averaged parameters are identical on every process; BN statistics are
per process without SyncBatchNorm, so the trainer copies process 0's EMA buffers to every
process (:meth:`ModelEma.broadcast_buffers`) before each evaluation and save, as it does for
the model's own buffers.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ModelEma", "ema_decay"]


def ema_decay(
    step: int,
    *,
    decay: float,
    min_decay: float = 0.0,
    warmup: bool = False,
    warmup_gamma: float = 1.0,
    warmup_power: float = 2 / 3,
    update_after_step: int = 0,
) -> float:
    """The decay of the EMA update after optimizer step ``step`` (1-based), as timm's
    ``ModelEmaV3.get_decay``."""
    n = max(0, step - update_after_step - 1)
    if n <= 0:
        return 0.0
    if not warmup:
        return decay
    return max(min(1.0 - (1.0 + n / warmup_gamma) ** -warmup_power, decay), min_decay)


class ModelEma(nn.Module):
    """An EMA copy of ``model`` (see the module docstring).

    Args:
        model: the model to average (unwrapped: not DDP, not compiled); it is deep-copied.
        decay, min_decay, warmup, warmup_gamma, warmup_power, update_after_step: as
            :func:`ema_decay` (``train.ema``).
        exclude_buffers: average parameters only; copy every buffer.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        decay: float = 0.9999,
        min_decay: float = 0.0,
        warmup: bool = False,
        warmup_gamma: float = 1.0,
        warmup_power: float = 2 / 3,
        update_after_step: int = 0,
        exclude_buffers: bool = False,
    ) -> None:
        super().__init__()
        self.module = copy.deepcopy(model)
        self.module.eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.min_decay = min_decay
        self.warmup = warmup
        self.warmup_gamma = warmup_gamma
        self.warmup_power = warmup_power
        self.update_after_step = update_after_step
        self.exclude_buffers = exclude_buffers

    @classmethod
    def from_config(cls, model: nn.Module, cfg: Any) -> ModelEma:
        """From a :class:`seg_trainer.config.EMAConfig`."""
        return cls(
            model,
            decay=cfg.decay,
            min_decay=cfg.min_decay,
            warmup=cfg.warmup,
            warmup_gamma=cfg.warmup_gamma,
            warmup_power=cfg.warmup_power,
            update_after_step=cfg.update_after_step,
            exclude_buffers=cfg.exclude_buffers,
        )

    def train(self, mode: bool = True) -> ModelEma:
        """The EMA stays in eval mode (its BN layers use the averaged statistics)."""
        super().train(False)
        return self

    def get_decay(self, step: int) -> float:
        return ema_decay(
            step,
            decay=self.decay,
            min_decay=self.min_decay,
            warmup=self.warmup,
            warmup_gamma=self.warmup_gamma,
            warmup_power=self.warmup_power,
            update_after_step=self.update_after_step,
        )

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average ``model`` (unwrapped, the same architecture) in after optimizer step ``step``."""
        weight = 1.0 - self.get_decay(step)
        ema_state = self.module.state_dict(keep_vars=True)
        src = model.state_dict(keep_vars=True)
        if src.keys() != ema_state.keys():
            missing = sorted(set(ema_state) ^ set(src))[:5]
            raise RuntimeError(
                f"ModelEma.update: the model's entries differ from the EMA's: {missing}"
            )
        params = {name for name, _ in self.module.named_parameters()}
        lerp_ema: list[Tensor] = []
        lerp_src: list[Tensor] = []
        for name, ema_v in ema_state.items():
            value = src[name].detach()
            averaged = name in params if self.exclude_buffers else ema_v.is_floating_point()
            if averaged:
                lerp_ema.append(ema_v.data)
                lerp_src.append(value)
            else:
                ema_v.data.copy_(value)
        if lerp_ema:
            torch._foreach_lerp_(lerp_ema, lerp_src, weight)

    def broadcast_buffers(self, accelerator: Any) -> None:
        """Copy process 0's EMA buffers to every process (no-op with one process)."""
        if accelerator.num_processes == 1:
            return
        import torch.distributed as dist

        for buf in self.module.buffers():
            dist.broadcast(buf.data, src=0)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def check_synchronized(self, accelerator: Any) -> None:
        """Raise when the EMA differs between processes (a bug: it must be identical).

        One all-gather of a float64 checksum per entry; call after :meth:`broadcast_buffers`.
        """
        if accelerator.num_processes == 1:
            return
        sums = torch.stack(
            [v.detach().double().sum() for v in self.module.state_dict().values()]
        ).to(accelerator.device)
        every = accelerator.gather(sums[None])
        if not bool((every == every[0]).all()):
            raise RuntimeError("the EMA weights differ between processes")
