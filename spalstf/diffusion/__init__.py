"""The diffusion process: noise schedules, the hybrid loss and the DDIM / DDPM samplers."""

from spalstf.diffusion.gaussian import GaussianDiffusion, LossTerms
from spalstf.diffusion.schedule import cosine_betas, respaced_timesteps

__all__ = ["GaussianDiffusion", "LossTerms", "cosine_betas", "respaced_timesteps"]
