"""The diffusion process against closed-form dummy models (no network, no training)."""

import numpy as np
import pytest
import torch

from spalstf.diffusion import GaussianDiffusion, cosine_betas, respaced_timesteps


def oracle(diffusion, x0):
    """A model that knows x0: its predicted noise is exact for any x_t."""

    def predict(xt, t):
        ab = diffusion._alpha_bar(torch.full((xt.shape[0],), t), xt)
        return (xt - ab.sqrt() * x0) / (1 - ab).sqrt()

    return predict


def test_cosine_schedule_matches_closed_form():
    betas = cosine_betas(1000)
    ab = np.cumprod(1 - betas)
    f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    assert betas.dtype == np.float64
    np.testing.assert_allclose(ab[:900], (f(np.arange(1, 901)) / f(0)), rtol=1e-9)
    assert betas.max() <= 0.999 and np.all(np.diff(ab) < 0)


def test_respaced_timesteps_descend_to_zero():
    steps = respaced_timesteps(1000, 20)
    assert steps[0] == 950 and steps[-1] == 0 and len(steps) == 20
    assert list(respaced_timesteps(1000, 1000)) == list(range(999, -1, -1))
    assert np.all(np.diff(steps) < 0)
    with pytest.raises(ValueError, match="n_steps"):
        respaced_timesteps(1000, 0)


def test_add_noise_has_the_forward_marginal():
    d = GaussianDiffusion(1000)
    x0 = torch.full((20000, 1), 2.0, dtype=torch.float64)
    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xt = d.add_noise(x0, noise, torch.full((20000,), 500))
    ab = d.alphas_cumprod[500]
    assert abs(float(xt.mean()) - 2 * np.sqrt(ab)) < 0.02
    assert abs(float(xt.var()) - (1 - ab)) < 0.02


@pytest.mark.parametrize("sampler,n_steps", [("ddim", 10), ("ddim", 50), ("ddpm", 25), ("ddpm", None)])
def test_reverse_loop_with_an_oracle_recovers_x0(sampler, n_steps):
    d = GaussianDiffusion(1000)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(64, 7, generator=gen, dtype=torch.float64)
    predict = oracle(d, x0)
    x = torch.randn(64, 7, generator=gen, dtype=torch.float64)
    timesteps = d.set_timesteps(n_steps, sampler)
    assert len(timesteps) == (n_steps or 1000)
    for t in timesteps:
        noise = torch.randn(64, 7, generator=gen, dtype=torch.float64) \
            if d.needs_noise(int(t)) else None
        x = d.step(predict(x, int(t)), None, int(t), x, noise=noise)
    # DDIM is exact with an oracle; ancestral steps keep only the tiny last-step variance.
    tol = 1e-6 if sampler == "ddim" else 0.05
    assert torch.allclose(x, x0, atol=tol)


def test_ddim_pinned_value_for_a_constant_noise_model():
    """A dummy model that always predicts zero noise: DDIM rescales x_T by 1/sqrt(ab) closed form."""
    d = GaussianDiffusion(1000)
    d.set_timesteps(5, "ddim")
    x = torch.ones(1, 1, dtype=torch.float64)
    for t in d.timesteps:
        x = d.step(torch.zeros_like(x), None, int(t), x)
    # eps = 0 means x0 = x_t / sqrt(ab_t) at the first step; DDIM then keeps that x0.
    assert float(x) == pytest.approx(1 / np.sqrt(d.alphas_cumprod[d.timesteps[0]]), rel=1e-9)


def test_hybrid_loss_components():
    d = GaussianDiffusion(1000)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(32, 5, generator=gen)
    noise = torch.randn(32, 5, generator=gen)
    t = torch.randint(0, 1000, (32,), generator=gen)
    xt = d.add_noise(x0, noise, t)
    v = torch.zeros(32, 5, requires_grad=True)
    perfect = d.training_losses(noise, v, x0, xt, noise, t, vlb_weight=0.001, kl_weight=0.0)
    assert float(perfect.mse) == 0.0
    # With the exact mean, the VLB is minimised by the true posterior variance, v near -1.
    worse = d.training_losses(noise, v + 1.0, x0, xt, noise, t, vlb_weight=0.001)
    assert float(worse.vlb.detach()) > float(perfect.vlb.detach())
    perfect.total.backward()
    assert v.grad is not None and torch.isfinite(v.grad).all()
    # The KL regulariser is 0 for noise-like predictions and grows when they shrink.
    z = torch.randn(4096, 64, generator=gen)
    assert float(d.training_losses(z, None, x0[:1], x0[:1], z, t[:1], kl_weight=1.0).kl) < 0.05
    assert float(d.training_losses(0.1 * z, None, x0[:1], x0[:1], z, t[:1], kl_weight=1.0).kl) > 1.0
