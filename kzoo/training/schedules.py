"""Learning-rate schedules: small pure functions in a registry, wrapped as one Keras schedule.

Each function maps `(step, peak, warmup_steps, decay_steps, min_lr)` to a learning rate with
`keras.ops`, so it runs inside compiled train steps. `WarmupSchedule` serializes by name.

Example:

>>> from kzoo.training.schedules import WarmupSchedule
>>> lr = WarmupSchedule("cosine", 1e-3, warmup_steps=100, decay_steps=2000, min_lr=1e-4)
>>> round(float(lr(100)), 6), round(float(lr(2000)), 6)
(0.001, 0.0001)
"""

from __future__ import annotations

import math

import keras
from keras import ops


def _warmup(step, peak, warmup_steps):
    # nanoGPT's ramp: lr * (it + 1) / (warmup + 1), so the very first step already learns.
    return peak * (step + 1.0) / (warmup_steps + 1.0)


def constant(step, peak, warmup_steps, decay_steps, min_lr):
    """Linear warmup, then `peak`."""
    return ops.where(step < warmup_steps, _warmup(step, peak, warmup_steps), peak)


def cosine(step, peak, warmup_steps, decay_steps, min_lr):
    """Linear warmup, cosine decay from `peak` to `min_lr` at `decay_steps`, then `min_lr`."""
    progress = (step - warmup_steps) / max(decay_steps - warmup_steps, 1)
    progress = ops.clip(progress, 0.0, 1.0)
    decayed = min_lr + 0.5 * (peak - min_lr) * (1.0 + ops.cos(math.pi * progress))
    return ops.where(step < warmup_steps, _warmup(step, peak, warmup_steps), decayed)


def linear(step, peak, warmup_steps, decay_steps, min_lr):
    """Linear warmup, linear decay from `peak` to `min_lr` at `decay_steps`, then `min_lr`."""
    progress = ops.clip((step - warmup_steps) / max(decay_steps - warmup_steps, 1), 0.0, 1.0)
    decayed = peak + (min_lr - peak) * progress
    return ops.where(step < warmup_steps, _warmup(step, peak, warmup_steps), decayed)


SCHEDULES = {"constant": constant, "cosine": cosine, "linear": linear}


def get(name: str):
    """Return the schedule function called `name`; ValueError lists the valid names."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid schedules: {sorted(SCHEDULES)}")
    return SCHEDULES[name]


@keras.saving.register_keras_serializable(package="kzoo")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A registered schedule function as a Keras learning-rate schedule.

    Args:
        name: str. one of `SCHEDULES` ("constant", "cosine", "linear").
        peak: float. learning rate reached after warmup.
        warmup_steps: int. linear warmup length.
        decay_steps: int. step at which decay reaches `min_lr`.
        min_lr: float. final learning rate.
    """

    def __init__(self, name: str, peak: float, warmup_steps: int, decay_steps: int,
                 min_lr: float = 0.0):
        self.fn = get(name)
        self.name = name
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)
        self.min_lr = float(min_lr)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        return self.fn(step, self.peak, self.warmup_steps, self.decay_steps, self.min_lr)

    def get_config(self):
        return {"name": self.name, "peak": self.peak, "warmup_steps": self.warmup_steps,
                "decay_steps": self.decay_steps, "min_lr": self.min_lr}
