"""The VAE of latent diffusion: shapes, the KL term, training, the latent scale, encode/decode, errors, helpers."""

import math

import pytest
import torch

from diffedu.course.checks import ExerciseError, set_grading
from diffedu.course.checks import lesson07 as checks_vae
from diffedu.latent import (
    QualityLog,
    encode_dataset,
    latent_unet_config,
    load_vae,
    sample_decoded,
    save_vae,
    seconds_to_reach,
    vae_weights_path,
)
from diffedu.models.unet import UNet, UNetConfig, mnist_small
from diffedu.models.vae import (
    VAE,
    VAEConfig,
    VAETrainConfig,
    cifar10_vae,
    compute_latent_scale,
    kl_divergence,
    mnist_vae,
    reparameterize,
    train_vae,
    vae_loss,
)
from diffedu.schedules import make_schedule
from diffedu.train import TrainConfig, train

TINY = VAEConfig(image_size=16, image_channels=1, pad=0, base_channels=8, channel_mults=(1, 2), latent_channels=2,
                 norm_groups=4)


def tiny_vae(seed: int = 0, **overrides) -> VAE:
    torch.manual_seed(seed)
    return VAE(VAEConfig(**{**TINY.__dict__, **overrides}))


def blobs(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """n images (n, 1, size, size) in [-1, 1]: a bright rectangle of random place and size on black."""
    g = torch.Generator().manual_seed(seed)
    x = -torch.ones(n, 1, size, size)
    for k in range(n):
        h, w = torch.randint(3, size // 2, (2,), generator=g).tolist()
        i, j = torch.randint(0, size - h, (1,), generator=g).item(), torch.randint(0, size - w, (1,), generator=g).item()
        x[k, :, i:i + h, j:j + w] = 1.0
    return x


def monte_carlo_kl(mu, logvar, samples, generator):
    """E_q[log q(z) - log p(z)] with z = mu + sigma eps: per draw 0.5 * sum(z^2 - eps^2 - log sigma^2)."""
    eps = torch.randn((samples, *mu.shape), generator=generator, dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * eps
    log_ratio = 0.5 * (z.square() - eps.square() - logvar).flatten(2).sum(-1)  # (samples, B)
    return log_ratio.mean(0), log_ratio.std(0) / samples**0.5


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("config, image, latent", [
    (mnist_vae(), (1, 28, 28), (4, 8, 8)),
    (cifar10_vae(), (3, 32, 32), (4, 8, 8)),
    (TINY, (1, 16, 16), (2, 8, 8)),
])
def test_shapes_through_the_vae(config, image, latent):
    torch.manual_seed(0)
    vae = VAE(config)
    x = torch.rand(2, *image) * 2 - 1
    x_hat, mu, logvar = vae(x)
    assert x_hat.shape == x.shape and mu.shape == logvar.shape == (2, *latent)
    assert config.latent_shape == latent and config.image_shape == image
    assert vae.encode(x).shape == (2, *latent)
    assert vae.decode(vae.encode(x)).shape == x.shape
    assert config.compression == pytest.approx(math.prod(image) / math.prod(latent))


def test_mnist_is_padded_to_32_and_cropped_back():
    config = mnist_vae()
    assert (config.pad, config.padded_size, config.latent_size, config.downsamplings) == (2, 32, 8, 2)
    vae = VAE(config)
    seen = []
    vae.encoder.stem.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    vae.decoder.out.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    x_hat, _, _ = vae(torch.zeros(1, 1, 28, 28))
    assert seen == [(1, 1, 32, 32), (1, 1, 32, 32)] and x_hat.shape == (1, 1, 28, 28)


# ----------------------------------------------------------------------------- the formulas


def test_kl_matches_the_closed_form_per_example():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    kl = kl_divergence(mu, logvar)
    assert kl.shape == (3,)
    for b in range(3):
        m, s2 = mu[b].flatten().tolist(), logvar[b].exp().flatten().tolist()
        by_hand = sum(0.5 * (mi**2 + si - 1 - math.log(si)) for mi, si in zip(m, s2))
        assert kl[b].item() == pytest.approx(by_hand, rel=1e-5)


def test_kl_matches_a_monte_carlo_estimate():
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    estimate, stderr = monte_carlo_kl(mu, logvar, 200_000, g)
    assert torch.all((estimate - kl_divergence(mu, logvar)).abs() < 5 * stderr + 1e-6)


def test_kl_is_zero_only_at_the_prior_and_positive_elsewhere():
    zero = torch.zeros(2, 3)
    assert torch.equal(kl_divergence(zero, zero), torch.zeros(2))
    g = torch.Generator().manual_seed(2)
    assert (kl_divergence(torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g)) > 0).all()


def test_reparameterize_draws_from_the_posterior_and_passes_gradients():
    mu = torch.tensor([[1.0, -2.0]]).expand(100_000, 2).clone().requires_grad_()
    logvar = torch.tensor([[0.0, math.log(0.25)]]).expand(100_000, 2).clone().requires_grad_()
    z = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(3))
    assert z.mean(0).tolist() == pytest.approx([1.0, -2.0], abs=0.02)
    assert z.std(0).tolist() == pytest.approx([1.0, 0.5], abs=0.02)
    z.sum().backward()
    assert torch.equal(mu.grad, torch.ones_like(mu)) and logvar.grad.abs().sum() > 0


def test_vae_loss_is_reconstruction_plus_beta_kl():
    g = torch.Generator().manual_seed(4)
    x, x_hat = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    mu, logvar = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g)
    loss, recon, kl = vae_loss(x, x_hat, mu, logvar, beta=0.1)
    assert recon.item() == pytest.approx(((x - x_hat) ** 2).sum().item() / 3, rel=1e-5)
    assert kl.item() == pytest.approx(kl_divergence(mu, logvar).mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx(recon.item() + 0.1 * kl.item(), rel=1e-5)


# ----------------------------------------------------------------------------- training and scaling


def test_a_tiny_run_lowers_the_reconstruction_error(tmp_path):
    STEPS = 40
    data, held_out = blobs(256), blobs(64, seed=1)
    vae = tiny_vae()

    def error():
        with torch.no_grad():
            return (vae.decode_unscaled(vae.posterior(held_out)[0]) - held_out).square().mean().item()

    before = error()
    result = train_vae(vae, data, VAETrainConfig(steps=STEPS, batch_size=16, lr=5e-3, warmup_steps=5, beta=1e-3),
                       device="cpu", progress=False, checkpoint=tmp_path / "vae_ckpt.pt")
    assert result.step == STEPS and len(result.recon) == STEPS and all(math.isfinite(v) for v in result.losses)
    assert error() < 0.5 * before
    assert sum(result.recon[-5:]) < sum(result.recon[:5])
    # the checkpoint resumes: 5 more steps continue the history
    again = train_vae(tiny_vae(), data, VAETrainConfig(steps=STEPS + 5, batch_size=16, lr=5e-3, warmup_steps=5),
                      device="cpu", progress=False, checkpoint=tmp_path / "vae_ckpt.pt")
    assert again.step == STEPS + 5 and len(again.losses) == STEPS + 5 and again.losses[:STEPS] == result.losses
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae_ckpt.pt"]  # written atomically, no temp file left


def test_the_latent_scale_gives_unit_variance_latents():
    vae = tiny_vae().eval()
    x = blobs(200)
    raw = vae.encode(x)  # scale 1 so far
    scale = compute_latent_scale(vae, x)
    assert scale == pytest.approx(1 / raw.std().item(), rel=1e-4)
    vae.set_latent_scale(scale)
    assert vae.encode(x).std().item() == pytest.approx(1.0, abs=1e-4)
    assert vae.encode(blobs(200, seed=5)).std().item() == pytest.approx(1.0, abs=0.2)  # about 1 on other data too


def test_train_vae_sets_the_latent_scale():
    vae = tiny_vae()
    result = train_vae(vae, blobs(64), VAETrainConfig(steps=3, batch_size=16), device="cpu", progress=False)
    assert result.vae.latent_scale.item() == pytest.approx(compute_latent_scale(vae, blobs(64)), rel=1e-4)


def test_encode_and_decode_apply_and_undo_the_scale():
    vae = tiny_vae().eval()
    vae.set_latent_scale(5.0)
    x = blobs(4)
    with torch.no_grad():
        mu, _ = vae.posterior(x)
        z = vae.encode(x)
        assert torch.allclose(z, 5.0 * mu)
        assert torch.allclose(vae.decode(z, clamp=False), vae.decode_unscaled(mu), atol=1e-5)
        assert vae.decode(z).min() >= -1 and vae.decode(z).max() <= 1
        sampled = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == z.shape and not torch.equal(sampled, z)
    assert vae.state_dict()["latent_scale"].item() == 5.0  # saved with the weights


# ----------------------------------------------------------------------------- clear errors


def test_an_image_size_the_encoder_cannot_halve_is_refused():
    with pytest.raises(ValueError, match=r"divisible by 2\*\*3 = 8; use pad=2"):
        VAEConfig(image_size=28, pad=0, channel_mults=(1, 2, 4, 4))  # 28 / 8 is not whole; 32 is
    with pytest.raises(ValueError, match="divisible by 2\\*\\*1"):
        VAEConfig(image_size=15, pad=0, channel_mults=(1, 2))
    with pytest.raises(ValueError, match="channel_mults"):
        VAEConfig(channel_mults=())


def test_a_latent_of_the_wrong_shape_is_refused_by_decode():
    vae = VAE(mnist_vae())
    with pytest.raises(ValueError, match=r"\(B, 4, 8, 8\).*3 channels.*latent_channels=4"):
        vae.decode(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="latent is 8x8"):
        vae.decode(torch.zeros(2, 4, 7, 7))
    with pytest.raises(ValueError, match="encode them first"):
        vae.decode(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"images of shape \(B, 1, 28, 28\).*decode them"):
        vae.encode(torch.zeros(2, 4, 8, 8))


def test_vae_train_config_needs_a_budget():
    with pytest.raises(ValueError, match="budget"):
        VAETrainConfig()


# ----------------------------------------------------------------------------- latent diffusion helpers


def test_the_latent_unet_has_the_same_width_and_trains_with_the_course_loop():
    config = latent_unet_config(mnist_small(), mnist_vae())
    pixel = mnist_small()
    assert (config.base_channels, config.channel_mults, config.num_res_blocks) == \
        (pixel.base_channels, pixel.channel_mults, pixel.num_res_blocks)
    assert (config.image_size, config.in_channels, config.attention_resolutions) == (8, 4, (2,))
    torch.manual_seed(0)
    model = UNet(config)
    latents = torch.randn(32, 4, 8, 8)
    result = train(model, latents, make_schedule("linear", 50), TrainConfig(steps=3, batch_size=8, warmup_steps=1),
                   device="cpu", progress=False)
    assert result.step == 3 and all(math.isfinite(v) for v in result.losses)


def test_sample_decoded_gives_images():
    torch.manual_seed(0)
    vae = tiny_vae().eval()
    pixel = UNetConfig(image_size=16, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4,
                       attention_resolutions=(8,))
    config = latent_unet_config(pixel, vae.config)
    assert config.attention_resolutions == (4,)
    images = sample_decoded(UNet(config), make_schedule("linear", 20), vae, 5, steps=3, batch_size=2,
                            generator=torch.Generator().manual_seed(0))
    assert images.shape == (5, 1, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert encode_dataset(vae, blobs(7), batch_size=3).shape == (7, 2, 8, 8)


def test_save_and_load_vae_round_trip(tmp_path):
    vae = tiny_vae(seed=3)
    vae.set_latent_scale(0.5)
    path = save_vae(vae, tmp_path / "v.pt", name="tiny", record={"minutes": 0.1})
    assert isinstance(torch.load(path, weights_only=True), dict)
    loaded, info = load_vae(path, device="cpu")
    assert info["record"] == {"minutes": 0.1} and not loaded.training
    x = blobs(3)
    with torch.no_grad():
        assert torch.allclose(loaded.encode(x), vae.eval().encode(x))
    with pytest.raises(FileNotFoundError, match="train_vae"):
        load_vae(tmp_path / "missing.pt")


def test_quality_log_evaluates_at_the_given_training_times(monkeypatch):
    log = QualityLog(lambda model: None, at_seconds=[10.0, 20.0])
    calls = []
    monkeypatch.setattr(log, "evaluate", lambda model, step, seconds: calls.append((step, seconds)))
    for step, seconds in [(1, 5.0), (2, 11.0), (3, 12.0), (4, 25.0), (5, 30.0)]:
        monkeypatch.setattr(log, "training_seconds", lambda s=seconds: s)
        if log._due(seconds):
            log._last = seconds
            log.evaluate(None, step, seconds)
    assert calls == [(2, 11.0), (4, 25.0)]
    rows = [{"seconds": 10.0, "fid_self": 80.0}, {"seconds": 20.0, "fid_self": 30.0}]
    assert seconds_to_reach(rows, 50.0) == 20.0 and seconds_to_reach(rows, 10.0) is None


@pytest.mark.skipif(not vae_weights_path("mnist_vae").is_file(), reason="no shipped MNIST VAE")
def test_the_shipped_vae_and_latent_model_fit_together():
    from diffedu.pretrained import load_pretrained

    vae, info = load_vae("mnist_vae", device="cpu")
    assert vae.config == mnist_vae() and vae.latent_scale.item() != 1.0
    assert vae_weights_path("mnist_vae").stat().st_size <= 3 * 2**20
    if vae_weights_path("mnist_latent").is_file():
        model, _, latent_info = load_pretrained("mnist_latent", device="cpu")
        assert latent_info["record"]["latent_scale"] == pytest.approx(vae.latent_scale.item())
        assert model.config == latent_unet_config(mnist_small(), vae.config)


# ----------------------------------------------------------------------------- the exercise checks


@pytest.fixture
def no_grading():
    set_grading(False)
    yield
    set_grading(None)


def test_checks_accept_the_reference_and_fall_back_when_skipped(no_grading, capsys):
    assert checks_vae.check_reparameterize(reparameterize) is reparameterize
    assert checks_vae.check_kl_divergence(kl_divergence) is kl_divergence

    def blank(*args):
        raise NotImplementedError()

    assert checks_vae.check_kl_divergence(blank) is kl_divergence
    assert "skipped" in capsys.readouterr().out


def test_grading_mode_fails_a_skipped_exercise():
    def blank(*args):
        raise NotImplementedError()

    set_grading(True)
    try:
        with pytest.raises(ExerciseError, match="not implemented"):
            checks_vae.check_reparameterize(blank)
    finally:
        set_grading(None)


@pytest.mark.parametrize("wrong, named", [
    (lambda m, lv, e: m + lv * e, "log sigma^2 is not the standard deviation"),
    (lambda m, lv, e: m + lv.exp() * e, "exp(logvar) is the variance"),
    (lambda m, lv, e: (m + (0.5 * lv).exp() * e).detach(), "gradient does not reach"),
])
def test_reparameterize_mistakes_are_named(wrong, named):
    with pytest.raises(ExerciseError) as err:
        checks_vae.check_reparameterize(wrong)
    assert named in str(err.value)


@pytest.mark.parametrize("wrong, named", [
    (lambda m, lv: (m**2 + lv.exp() - 1 - lv).flatten(1).sum(1), "factor 0.5 is missing"),
    (lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).flatten(1).mean(1), "averaged over the latent"),
    (lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).sum(), "the batch was summed"),
    (lambda m, lv: 0.5 * (m**2 + lv**2 - 1 - (lv**2).log()).flatten(1).sum(1), "logvar is log sigma^2, not sigma"),
    (lambda m, lv: 0.5 * (m**2 + (0.5 * lv).exp() - 1 - lv).flatten(1).sum(1), "needs the variance"),
])
def test_kl_mistakes_are_named(wrong, named):
    with pytest.raises(ExerciseError) as err:
        checks_vae.check_kl_divergence(wrong)
    assert named in str(err.value)
