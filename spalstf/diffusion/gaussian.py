"""The Gaussian diffusion process as a plain object: the network is handed in, never owned.

Vocabulary follows diffusers' schedulers (`add_noise`, `set_timesteps`, `step`) and the
maths follows improved-diffusion (Nichol & Dhariwal 2021): the network predicts the noise
epsilon and a variance interpolation v in [-1, 1] between beta_t and the posterior variance.
Respacing (sampling with fewer steps than training) works on the cumulative products only, so
any subset of the training timesteps can be used without retraining.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from spalstf.diffusion.schedule import make_betas, respaced_timesteps


@dataclass
class LossTerms:
    """The components of the hybrid loss of one batch (tensors; `total` is what is optimised)."""

    total: torch.Tensor
    mse: torch.Tensor
    vlb: torch.Tensor
    kl: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "mse", "vlb", "kl")}


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_nll(x, mean, logvar):
    """Negative log-likelihood of x under N(mean, exp(logvar)), elementwise, in nats."""
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


class GaussianDiffusion:
    """A DDPM noise process with DDIM and ancestral (DDPM) reverse steps.

    Parameters
    ----------
    num_train_timesteps
        Length T of the forward process used in training.
    beta_schedule
        "cosine" (default) or "linear".
    learn_sigma
        Whether the network's second output (v) sets the reverse variance; otherwise the
        posterior variance is used.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "cosine",
                 learn_sigma: bool = True) -> None:
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_schedule = beta_schedule
        self.learn_sigma = learn_sigma
        self.betas = make_betas(beta_schedule, self.num_train_timesteps)
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)
        self.timesteps = np.arange(self.num_train_timesteps)[::-1].copy()
        self.sampler = "ddpm"

    # --- helpers ----------------------------------------------------------------------------
    def _alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer timesteps t (t = -1 gives 1), shaped to broadcast over `like`."""
        table = torch.as_tensor(np.concatenate([[1.0], self.alphas_cumprod]), dtype=torch.float64)
        values = table[(t.long() + 1).cpu()].to(device=like.device, dtype=like.dtype)
        return values.reshape(-1, *([1] * (like.dim() - 1)))

    def config(self) -> dict:
        return {"num_train_timesteps": self.num_train_timesteps,
                "beta_schedule": self.beta_schedule, "learn_sigma": self.learn_sigma}

    # --- forward process -------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) = N(sqrt(ab_t) x0, (1 - ab_t) I) with the given noise."""
        ab = self._alpha_bar(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def predict_x0(self, xt, eps, t):
        ab = self._alpha_bar(t, xt)
        return (xt - (1 - ab).sqrt() * eps) / ab.sqrt()

    def _posterior(self, x0, xt, t, t_prev):
        """Mean, variance and clipped log-variance of q(x_{t_prev} | x_t, x_0)."""
        ab_t = self._alpha_bar(t, xt)
        ab_prev = self._alpha_bar(t_prev, xt)
        beta = 1 - ab_t / ab_prev
        var = beta * (1 - ab_prev) / (1 - ab_t)
        mean = (ab_prev.sqrt() * beta / (1 - ab_t)) * x0 + \
               ((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab_t)) * xt
        # At the first step the posterior variance is 0: use the next one, as improved-diffusion.
        floor = torch.as_tensor(self.betas[1] * (1 - self.alphas_cumprod[0])
                                / (1 - self.alphas_cumprod[1]), dtype=xt.dtype, device=xt.device)
        log_var = torch.log(torch.maximum(var, floor))
        return mean, var, log_var, beta

    def p_mean_logvar(self, eps, v, xt, t, t_prev, clip=None):
        """Mean and log-variance of the model's reverse step p(x_{t_prev} | x_t).

        `clip` = (low, high) bounds the predicted x0 (improved-diffusion's clip_denoised).
        """
        x0 = self.predict_x0(xt, eps, t)
        if clip is not None:
            x0 = torch.maximum(torch.minimum(x0, clip[1]), clip[0])
        mean, _, post_log_var, beta = self._posterior(x0, xt, t, t_prev)
        if self.learn_sigma and v is not None:
            frac = (v.clamp(-1, 1) + 1) / 2
            log_var = frac * torch.log(beta) + (1 - frac) * post_log_var
        else:
            log_var = post_log_var
        return mean, log_var, x0

    # --- training ---------------------------------------------------------------------------
    def training_losses(self, eps_pred: torch.Tensor, v_pred: torch.Tensor | None,
                        x0: torch.Tensor, xt: torch.Tensor, noise: torch.Tensor,
                        t: torch.Tensor, vlb_weight: float = 0.0,
                        kl_weight: float = 0.0, mask: torch.Tensor | None = None) -> LossTerms:
        """The hybrid objective: MSE on the noise + vlb_weight * T * L_t + kl_weight * KL.

        L_t is the variational-bound term at the sampled t, computed on a detached mean so it
        trains the variance only (improved-diffusion); T * L_t is an unbiased estimate of the
        whole bound, so vlb_weight is improved DDPM's lambda (0.001 in the paper). The KL
        regulariser compares the distribution of a cell's predicted noise over its genes,
        moment-matched to a Gaussian, with the true noise distribution N(0, 1).

        `mask` (batch, genes) of 0/1, when given, restricts every term to the genes it marks
        (the masked-gene model's PREDICT genes): each term is a per-cell mean over the cell's
        marked genes, then a mean over the cells that have any, so every cell weighs the same
        whatever its number of marked genes. Without a mask (or with all ones) the terms are
        those of the unmasked loss.
        """
        weights = count = rows = None
        if mask is not None:
            weights = mask.to(eps_pred.dtype)
            count = weights.sum(dim=1)
            rows = count > 0
            if not bool(rows.any()):
                raise ValueError("`mask` marks no gene in any cell: there is nothing to learn")

        def per_cell(values: torch.Tensor) -> torch.Tensor:
            """Each cell's mean over its marked genes (all genes without a mask)."""
            if weights is None:
                return values.mean(dim=1)
            return (values * weights).sum(dim=1)[rows] / count[rows]

        squared = (eps_pred - noise) ** 2
        mse = squared.mean() if weights is None else per_cell(squared).mean()
        zero = mse.new_zeros(())
        vlb = zero
        if vlb_weight > 0 and v_pred is not None and self.learn_sigma:
            t_prev = t - 1
            true_mean, _, true_log_var, _ = self._posterior(x0, xt, t, t_prev)
            mean, log_var, _ = self.p_mean_logvar(eps_pred.detach(), v_pred, xt, t, t_prev)
            kl = per_cell(normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
            nll = per_cell(gaussian_nll(x0, mean, log_var)) / math.log(2.0)
            first = t == 0 if weights is None else (t == 0)[rows]
            vlb = torch.where(first, nll, kl).mean() * self.num_train_timesteps
        kl_reg = zero
        if kl_weight > 0:
            mu = per_cell(eps_pred)
            if weights is None:
                n_genes = torch.full_like(mu, float(eps_pred.shape[1]))
                var = eps_pred.var(dim=1, unbiased=False) + 1e-6
            else:
                n_genes = count[rows]
                var = per_cell((eps_pred - self._scatter(mu, rows)[:, None]) ** 2) + 1e-6
            # A cell with one gene has no spread to match: only its mean is pulled to 0.
            kl_reg = torch.where(n_genes > 1, 0.5 * (var + mu ** 2 - 1 - torch.log(var)),
                                 0.5 * mu ** 2).mean()
        total = mse + vlb_weight * vlb + kl_weight * kl_reg
        return LossTerms(total=total, mse=mse, vlb=vlb, kl=kl_reg)

    @staticmethod
    def _scatter(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Per-cell `values` of the cells `rows` (a boolean mask) back on every cell (0 else)."""
        out = values.new_zeros(rows.shape[0])
        out[rows] = values
        return out

    # --- sampling ---------------------------------------------------------------------------
    def set_timesteps(self, n_steps: int | None, sampler: str = "ddim") -> np.ndarray:
        """Choose the reverse timesteps (descending). `n_steps=None` uses all T steps."""
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"`sampler` must be 'ddim' or 'ddpm'; received {sampler!r}")
        n = self.num_train_timesteps if n_steps is None else int(n_steps)
        self.timesteps = respaced_timesteps(self.num_train_timesteps, n)
        self.sampler = sampler
        return self.timesteps

    def previous_timestep(self, t: int) -> int:
        idx = int(np.nonzero(self.timesteps == t)[0][0])
        return int(self.timesteps[idx + 1]) if idx + 1 < len(self.timesteps) else -1

    def needs_noise(self, t: int, eta: float = 0.0) -> bool:
        """Whether the step from t draws fresh noise (never the last step)."""
        if self.previous_timestep(t) < 0:
            return False
        return self.sampler == "ddpm" or eta > 0

    def step(self, eps: torch.Tensor, v: torch.Tensor | None, t: int, sample: torch.Tensor,
             noise: torch.Tensor | None = None, eta: float = 0.0,
             clip: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One reverse step from timestep t to the next one in `self.timesteps`.

        `clip` = (low, high), broadcastable to the sample, bounds the predicted x0 (the data
        range); the noise is then re-derived from the clipped x0, as DDIM with clipping does.
        """
        t_prev = self.previous_timestep(t)
        tt = torch.full((sample.shape[0],), t, dtype=torch.long, device=sample.device)
        tp = torch.full_like(tt, t_prev)
        if self.sampler == "ddpm":
            mean, log_var, _ = self.p_mean_logvar(eps, v, sample, tt, tp, clip=clip)
            if t_prev < 0 or noise is None:
                return mean
            return mean + torch.exp(0.5 * log_var) * noise
        ab_t = self._alpha_bar(tt, sample)
        ab_prev = self._alpha_bar(tp, sample)
        x0 = (sample - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
        if clip is not None:
            x0 = torch.maximum(torch.minimum(x0, clip[1]), clip[0])
            eps = (sample - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
        if t_prev < 0:
            return x0
        sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
        out = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and noise is not None:
            out = out + sigma * noise
        return out
