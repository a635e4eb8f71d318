"""Noise schedules, computed in float64 (as improved-diffusion and diffusers do)."""

from __future__ import annotations

import math

import numpy as np


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """The cosine schedule of Nichol & Dhariwal (2021): alpha_bar(t) = cos^2((t/T + s)/(1 + s) pi/2)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return np.asarray(betas, dtype=np.float64)


def linear_betas(num_timesteps: int) -> np.ndarray:
    """The linear schedule of Ho et al. (2020), rescaled to the number of steps."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def make_betas(name: str, num_timesteps: int) -> np.ndarray:
    if name == "cosine":
        return cosine_betas(num_timesteps)
    if name == "linear":
        return linear_betas(num_timesteps)
    raise ValueError(f"`beta_schedule` must be 'cosine' or 'linear'; received {name!r}")


def respaced_timesteps(num_train_timesteps: int, n_steps: int) -> np.ndarray:
    """`n_steps` training timesteps, descending, ending at 0 ("leading" spacing, as diffusers).

    With fewer steps than training timesteps the first is (n_steps - 1) * (T // n_steps), not
    T - 1: under the cosine schedule alpha_bar(T - 1) is ~1e-9, where predicting x0 from the
    noise divides its error by sqrt(alpha_bar) (a factor 2e4), while the leading start keeps that
    factor near 10 and x_t there is still pure noise for practical purposes.
    """
    if not 1 <= n_steps <= num_train_timesteps:
        raise ValueError(
            f"`n_steps` must be between 1 and {num_train_timesteps}; received {n_steps}"
        )
    steps = np.arange(n_steps, dtype=np.int64) * (num_train_timesteps // n_steps)
    return steps[::-1].copy()
