"""Checks for the exercises of lesson 07 (latent diffusion): the reparameterisation, the KL term and the VAE objective.

Same rules as `diffedu.course.checks`: a right answer is returned, a wrong one raises `ExerciseError` naming the
likely mistake, a skipped one (still raising NotImplementedError) continues with `diffedu.models.vae`'s version.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, _randomise_, check_exercise
from diffedu.models.vae import VAE, VAEConfig, kl_divergence, reparameterize, vae_loss

__all__ = ["ExerciseError", "check_kl_divergence", "check_reparameterize", "check_vae_objective"]


def check_reparameterize(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 07: z = mu + sigma * eps with sigma = exp(0.5 * log sigma^2); the gradient must reach mu and logvar."""
    g = torch.Generator().manual_seed(70)
    mu, logvar, eps = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    mu4, logvar4, eps4 = (torch.randn(2, 2, 3, 3, generator=g) for _ in range(3))
    cases = [
        Case((mu, logvar, eps), {}, "mu, logvar and eps of shape (2, 3)"),
        Case((mu4, logvar4, eps4), {}, "mu, logvar and eps of shape (2, 2, 3, 3), like a batch of latents"),
    ]
    mistakes = [
        Mistake("log sigma^2 is not the standard deviation: sigma = exp(0.5 * logvar).",
                lambda m, lv, e: m + lv * e),
        Mistake("exp(logvar) is the variance sigma^2; eps must be scaled by the standard deviation, "
                "sigma = exp(0.5 * logvar) (the square root of exp(logvar)).", lambda m, lv, e: m + lv.exp() * e),
        Mistake("sigma multiplies eps: z = mu + sigma * eps, not mu + sigma + eps.",
                lambda m, lv, e: m + (0.5 * lv).exp() + e),
        Mistake("the noise is missing: z = mu + sigma * eps.", lambda m, lv, e: m),
        Mistake("the mean is missing: z = mu + sigma * eps.", lambda m, lv, e: (0.5 * lv).exp() * e),
        Mistake("mu and sigma are swapped: z = mu + sigma * eps.", lambda m, lv, e: (0.5 * lv).exp() + m * e),
    ]
    checked = check_exercise("reparameterize", learner, reparameterize, cases, mistakes=mistakes)
    if checked is learner:  # the values agree; now the point of the trick: gradients flow to mu and logvar
        m, lv = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
        try:
            z = learner(m, lv, eps)
            z.sum().backward()
        except RuntimeError as err:
            raise ExerciseError(f"reparameterize gives the right values, but the gradient does not reach mu and logvar: "
                                f"backward failed ({err}). Do not detach the result or compute it under "
                                "torch.no_grad().") from err
        grads_ok = (m.grad is not None and lv.grad is not None and torch.allclose(m.grad, torch.ones_like(mu))
                    and torch.allclose(lv.grad, 0.5 * (0.5 * logvar).exp() * eps, atol=1e-5))
        if not grads_ok:
            raise ExerciseError("reparameterize gives the right values, but the gradient does not reach mu and "
                                "logvar (dz/dmu should be 1, dz/dlogvar = 0.5 * sigma * eps). Build z from mu and "
                                "logvar with torch operations, without .detach(), .item() or torch.no_grad().")
    return checked


def check_kl_divergence(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 07: KL(N(mu, sigma^2) || N(0, I)) = 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2), one value per example."""
    g = torch.Generator().manual_seed(71)
    mu, logvar = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g)
    mu2, logvar2 = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    cases = [
        Case((mu, logvar), {}, "mu and logvar of shape (3, 2, 2, 2): 3 latents of 2 channels, 2x2; expect 3 values"),
        Case((mu2, logvar2), {}, "mu and logvar of shape (4, 5): 4 examples of 5 numbers; expect 4 values"),
    ]

    def terms(m: Tensor, lv: Tensor) -> Tensor:
        return (m.square() + lv.exp() - 1 - lv).flatten(1)  # (B, D)

    mistakes = [
        Mistake("the factor 0.5 is missing: KL = 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2).",
                lambda m, lv: terms(m, lv).sum(1)),
        Mistake("you averaged over the latent's numbers; the KL of independent dimensions is their SUM "
                "(.flatten(1).sum(dim=1)), one value per example.", lambda m, lv: 0.5 * terms(m, lv).mean(1)),
        Mistake("the batch was summed too: return one KL per example, shape (B,), summing over every "
                "dimension but the first.", lambda m, lv: 0.5 * terms(m, lv).sum()),
        Mistake("the batch was averaged too: return one KL per example, shape (B,); the loss averages it later.",
                lambda m, lv: 0.5 * terms(m, lv).sum(1).mean()),
        Mistake("only the last dimension was summed: flatten every dimension but the batch first, "
                "e.g. .flatten(1).sum(dim=1).", lambda m, lv: 0.5 * (m.square() + lv.exp() - 1 - lv).sum(-1)),
        Mistake("logvar is log sigma^2, not sigma: sigma^2 = exp(logvar) and log sigma^2 = logvar.",
                lambda m, lv: 0.5 * (m.square() + lv.square() - 1 - lv.square().log()).flatten(1).sum(1)),
        Mistake("exp(0.5 * logvar) is sigma; the formula needs the variance sigma^2 = exp(logvar).",
                lambda m, lv: 0.5 * (m.square() + (0.5 * lv).exp() - 1 - lv).flatten(1).sum(1)),
        Mistake("the sign of the log term: it is - log sigma^2 (= - logvar).",
                lambda m, lv: 0.5 * (m.square() + lv.exp() - 1 + lv).flatten(1).sum(1)),
        Mistake("the - 1 is missing: KL = 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2), which is 0 when mu = 0 "
                "and sigma = 1.", lambda m, lv: 0.5 * (m.square() + lv.exp() - lv).flatten(1).sum(1)),
        Mistake("the mu^2 term is missing: a posterior far from 0 must pay for it.",
                lambda m, lv: 0.5 * (lv.exp() - 1 - lv).flatten(1).sum(1)),
    ]
    return check_exercise("kl_divergence", learner, kl_divergence, cases, mistakes=mistakes)


def _library_objective(vae: VAE, x: Tensor, beta: float, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The library's VAE objective with the exercise's signature: posterior, reparameterize, decode, vae_loss."""
    mu, logvar = vae.posterior(x)
    z = reparameterize(mu, logvar, eps if eps is not None else torch.randn_like(mu))
    return vae_loss(x, vae.decode_unscaled(z), mu, logvar, beta)


_library_objective.__module__, _library_objective.__qualname__ = vae_loss.__module__, "vae_loss (after VAE.forward)"


def check_vae_objective(learner: Callable[..., tuple]) -> Callable[..., tuple]:
    """Lesson 07: the VAE's training objective from the learner's pieces, vae_objective(vae, x, beta, eps) ->
    (loss, reconstruction, KL): the reconstruction summed over each image's pixels, both terms averaged over the
    batch, loss = reconstruction + beta * KL, decoded from the sample z = mu + sigma * eps."""
    config = VAEConfig(image_size=8, pad=0, base_channels=4, channel_mults=(1, 2), latent_channels=2, norm_groups=2)
    with torch.random.fork_rng(devices=[]):  # building the VAE draws its initial weights: leave the caller's RNG be
        vae = _randomise_(VAE(config), seed=71).eval()
    vae.set_latent_scale(2.0)  # so that decode (which divides by it) and decode_unscaled differ
    g = torch.Generator().manual_seed(72)
    x = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(3, 2, 4, 4, generator=g)
    cases = [Case((vae, x, 0.5, eps), {}, "a small random VAE (8x8 images, latents 2x4x4), 3 images, beta = 0.5, eps "
                  "given"),
             Case((vae, x, 1e-3, eps), {}, "the same, beta = 0.001")]

    def wrong(*, decode_mu: bool = False, pixels: str = "sum", batch: str = "mean", beta_on: str = "kl",
              decoder: str = "unscaled") -> Callable[..., tuple]:
        def compute(v: VAE, x_: Tensor, beta: float, e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            with torch.no_grad():
                mu, logvar = v.posterior(x_)
                z = mu if decode_mu else reparameterize(mu, logvar, e)
                x_hat = v.decode_unscaled(z) if decoder == "unscaled" else v.decode(z)
                per_image = (x_hat - x_).square().flatten(1)
                per_image = per_image.sum(dim=1) if pixels == "sum" else per_image.mean(dim=1)
                kl_each = kl_divergence(mu, logvar)
                reduce = (lambda a: a.mean()) if batch == "mean" else (lambda a: a.sum())
                recon, kl = reduce(per_image), reduce(kl_each)
                loss = recon + beta * kl if beta_on == "kl" else beta * recon + kl
            return loss, recon, kl
        return compute

    mistakes = [
        Mistake("decode the SAMPLE z = mu + sigma * eps, not the mean mu: decoding mu gives the spread sigma no "
                "gradient from the reconstruction, and the KL term alone then widens it.", wrong(decode_mu=True)),
        Mistake("the reconstruction term SUMS the squared error over each image's pixels (then averages over the "
                "batch), as the KL sums over the latent entries; a mean over pixels makes it 64 times smaller here "
                "(784 on MNIST) and hands the balance to the KL.", wrong(pixels="mean")),
        Mistake("average both terms over the batch (.mean()), not sum: the loss should not grow with the batch size.",
                wrong(batch="sum")),
        Mistake("beta weighs the KL term: loss = reconstruction + beta * KL.", wrong(beta_on="recon")),
        Mistake("decode with vae.decode_unscaled(z): vae.decode expects latents multiplied by latent_scale (the "
                "diffusion model's view) and divides by it, and it clamps to [-1, 1].", wrong(decoder="scaled")),
    ]
    return check_exercise("vae_objective", learner, _library_objective, cases, mistakes=mistakes)
