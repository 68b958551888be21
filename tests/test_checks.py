"""The exercise checks: right answers pass, wrong ones are explained, skipped ones fall back."""

import pytest
import torch

from diffedu.course import checks
from diffedu.course.checks import core
from diffedu.forward import q_sample
from diffedu.losses import ddpm_loss
from diffedu.samplers import ddpm_step


def abar_of(schedule, t, x):
    return schedule.alphas_cumprod[t].reshape(-1, *([1] * (x.ndim - 1)))


def test_the_reference_answers_pass(capsys):
    assert checks.check_q_sample(q_sample) is q_sample
    assert checks.check_ddpm_loss(ddpm_loss) is ddpm_loss
    assert checks.check_ddpm_step(ddpm_step) is ddpm_step
    assert capsys.readouterr().out.count("✓") == 3


def test_a_q_sample_without_the_square_root_is_explained():
    def forgot_sqrt(x0, t, eps, schedule):
        abar = abar_of(schedule, t, x0)
        return abar.sqrt() * x0 + (1 - abar) * eps

    with pytest.raises(checks.ExerciseError) as info:
        checks.check_q_sample(forgot_sqrt)
    message = str(info.value)
    assert "q_sample gives the wrong answer" in message
    assert "expected" in message and "got" in message
    assert "noise term lacks its square root" in message


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda x0, t, eps, s: s.alphas[t].view(-1, 1, 1, 1).sqrt() * x0 + (1 - s.alphas[t].view(-1, 1, 1, 1)).sqrt() * eps,
         "alpha-bar_t"),
        (lambda x0, t, eps, s: abar_of(s, t, x0).sqrt() * eps + (1 - abar_of(s, t, x0)).sqrt() * x0, "swapped"),
        (lambda x0, t, eps, s: abar_of(s, t, x0).sqrt() * x0, "noise is missing"),
        (lambda x0, t, eps, s: abar_of(s, t + 1, x0).sqrt() * x0 + (1 - abar_of(s, t + 1, x0)).sqrt() * eps, "off by one"),
    ],
)
def test_common_q_sample_mistakes_are_named(wrong, hint):
    with pytest.raises(checks.ExerciseError, match=hint):
        checks.check_q_sample(wrong)


def test_an_unknown_mistake_still_gets_expected_against_got():
    with pytest.raises(checks.ExerciseError) as info:
        checks.check_q_sample(lambda x0, t, eps, s: x0 + 0.01)
    assert "largest difference" in str(info.value)
    assert "Likely mistake" not in str(info.value)


def test_a_crash_in_the_learners_code_is_reported_with_the_case():
    def broken(x0, t, eps, schedule):
        return x0.view(7)

    with pytest.raises(checks.ExerciseError, match="(?s)raised RuntimeError.*test case"):
        checks.check_q_sample(broken)


def test_a_wrong_shape_is_reported():
    with pytest.raises(checks.ExerciseError, match="expected shape"):
        checks.check_q_sample(lambda x0, t, eps, s: x0[0])


def skipped(*args, **kwargs):
    # YOUR CODE HERE
    raise NotImplementedError()


def test_a_skipped_exercise_falls_back_to_the_reference(capsys):
    assert checks.check_q_sample(skipped) is q_sample
    assert checks.check_ddpm_loss(skipped) is ddpm_loss
    assert checks.check_ddpm_step(skipped) is ddpm_step
    out = capsys.readouterr().out
    assert out.count("skipped this exercise") == 3
    assert "diffedu.forward.q_sample" in out


def test_grading_mode_fails_a_skipped_exercise(monkeypatch):
    monkeypatch.setenv("DIFFEDU_GRADING", "1")
    assert checks.grading_enabled()
    with pytest.raises(checks.ExerciseSkipped, match="not implemented"):
        checks.check_q_sample(skipped)
    assert checks.check_q_sample(q_sample) is q_sample  # right answers still pass
    checks.set_grading(False)
    try:
        assert checks.check_q_sample(skipped) is q_sample
    finally:
        checks.set_grading(None)


def test_ddpm_loss_mistakes():
    def target_x0(model, x0, schedule, t=None, eps=None):
        return ((model(q_sample(x0, t, eps, schedule), t) - x0) ** 2).mean()

    def summed(model, x0, schedule, t=None, eps=None):
        return ((model(q_sample(x0, t, eps, schedule), t) - eps) ** 2).sum()

    with pytest.raises(checks.ExerciseError, match="target is the noise eps, not x0"):
        checks.check_ddpm_loss(target_x0)
    with pytest.raises(checks.ExerciseError, match="mean of the squared errors"):
        checks.check_ddpm_loss(summed)


def test_ddpm_loss_must_draw_t_and_eps_itself():
    def needs_t(model, x0, schedule, t=None, eps=None):
        return ((model(q_sample(x0, t, eps, schedule), t) - eps) ** 2).mean()

    with pytest.raises(Exception):
        checks.check_ddpm_loss(needs_t)


def test_ddpm_step_mistakes():
    def noise_at_the_end(x_t, t, eps, s, noise):
        return (x_t - s.betas[t] / (1 - s.alphas_cumprod[t]).sqrt() * eps) / s.alphas[t].sqrt() + s.betas[t].sqrt() * noise

    def no_sqrt_alpha(x_t, t, eps, s, noise):
        out = (x_t - s.betas[t] / (1 - s.alphas_cumprod[t]).sqrt() * eps) / s.alphas[t]
        return out + s.betas[t].sqrt() * noise if t > 0 else out

    with pytest.raises(checks.ExerciseError, match="no noise at the last step"):
        checks.check_ddpm_step(noise_at_the_end)
    with pytest.raises(checks.ExerciseError, match=r"sqrt\(alpha_t\)"):
        checks.check_ddpm_step(no_sqrt_alpha)


def test_compare_handles_numbers_and_tuples():
    assert core._compare(1.0, 1.0, 1e-6, 1e-6) is None
    assert "expected 2" in core._compare(1.0, 2.0, 1e-6, 1e-6)
    assert core._compare((torch.ones(2), 3.0), (torch.ones(2), 3.0), 1e-6, 1e-6) is None
    assert "item 1" in core._compare((torch.ones(2), 3.0), (torch.ones(2), 4.0), 1e-6, 1e-6)


def test_ema_update_check():
    from diffedu.train import ema_update

    def in_place(ema, params, decay):
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p, 1 - decay)

    def swapped(ema, params, decay):
        for e, p in zip(ema, params):
            e.mul_(1 - decay).add_(p, alpha=decay)

    def rebinds(ema, params, decay):
        for e, p in zip(ema, params):
            e = decay * e + (1 - decay) * p  # noqa: F841 (the mistake under test)

    assert checks.check_ema_update(in_place) is in_place
    with pytest.raises(checks.ExerciseError, match="swapped"):
        checks.check_ema_update(swapped)
    with pytest.raises(checks.ExerciseError, match="in place"):
        checks.check_ema_update(rebinds)
    assert checks.check_ema_update(skipped) is ema_update


def test_a_failed_check_shows_its_message_without_the_checks_source():
    """In Jupyter a wrong answer shows the message (expected against got, the mistake), not the check's code."""
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from diffedu.course.checks import lesson01 as checks\n"
                                  "def q_sample(x0, t, eps, schedule):\n"
                                  "    abar = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)\n"
                                  "    return abar * x0 + (1 - abar) * eps"),
        nbformat.v4.new_code_cell("checks.check_q_sample(q_sample)"),
    ])
    nbclient.NotebookClient(nb, timeout=120, allow_errors=True, kernel_name="python3").execute()
    error = next(o for o in nb.cells[1].outputs if o.output_type == "error")
    shown = "\n".join(error.traceback)
    assert error.ename == "ExerciseError" and "expected" in shown and "Likely mistake: no square roots" in shown
    assert "Mistake(" not in shown and "lambda" not in shown and "core.py" not in shown and "lesson01.py" not in shown
    assert len(error.traceback) <= 8  # a short box, not twenty lines of library frames


def _sample_loop(*, order="down", stale=False, global_noise=False, callback_args="t, x"):
    """A DDPM loop as a learner might write it; the keywords introduce one mistake each."""

    def loop(model, schedule, x_T, generator, callback=None):  # noqa: N803
        times = range(schedule.T - 1, -1, -1) if order == "down" else range(schedule.T)
        x = x_T
        with torch.no_grad():
            for t in times:
                eps = model(x_T if stale else x, torch.full((x.shape[0],), t))
                z = torch.randn(x.shape) if global_noise else torch.randn(x.shape, generator=generator)
                x = ddpm_step(x, t, eps, schedule, z)
                if callback is not None:
                    callback(*((t, x) if callback_args == "t, x" else (x, t)))
        return x

    return loop


def test_ddpm_sample_loop_right_wrong_and_skipped(capsys):
    right = _sample_loop()
    assert checks.check_ddpm_sample_loop(right) is right
    for wrong, named in [(_sample_loop(order="up"), "the loop runs forward"),
                         (_sample_loop(stale=True), "always sees x_T"),
                         (_sample_loop(global_noise=True), "draw it with the one passed in")]:
        with pytest.raises(checks.ExerciseError, match=named):
            checks.check_ddpm_sample_loop(wrong)
    with pytest.raises(checks.ExerciseError, match="callback"):  # callback(x, t): the callback sees the wrong things
        checks.check_ddpm_sample_loop(_sample_loop(callback_args="x, t"))

    def int_t(model, schedule, x_T, generator, callback=None):  # noqa: N803
        x = x_T
        for t in range(schedule.T - 1, -1, -1):
            x = ddpm_step(x, t, model(x, t), schedule, torch.randn(x.shape, generator=generator))
        return x

    with pytest.raises(checks.ExerciseError, match=r"integer tensor of shape \(B,\)"):
        checks.check_ddpm_sample_loop(int_t)
    fallback = checks.check_ddpm_sample_loop(skipped)
    assert "skipped this exercise" in capsys.readouterr().out
    # the fallback has the exercise's signature and samples like the library
    from diffedu.schedules import make_schedule
    schedule = make_schedule("linear", T=50)
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))  # noqa: N806
    seen = []
    out = fallback(lambda x, t: 0.3 * x, schedule, x_T, torch.Generator().manual_seed(1), lambda t, x: seen.append(t))
    expected = right(lambda x, t: 0.3 * x, schedule, x_T, torch.Generator().manual_seed(1))
    assert torch.allclose(out, expected, atol=1e-5) and seen == list(range(49, -1, -1))


def test_cosine_schedule_right_wrong_and_skipped(capsys):
    import math

    from diffedu.schedules import betas_from_alpha_bar, cosine_alpha_bar, cosine_beta_schedule

    def f(u, s=0.008):
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    def betas(alpha_bar, T, max_beta=0.999):  # noqa: N803
        abar = alpha_bar(torch.arange(T + 1, dtype=torch.float64) / T)
        return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)

    assert checks.check_cosine_schedule(f, betas) == (f, betas)
    assert torch.allclose(betas(f, 1000).float(), cosine_beta_schedule(1000).betas)
    for wrong_f, named in [(lambda u, s=0.008: torch.cos((u + s) / (1 + s) * math.pi / 2), "SQUARED"),
                           (lambda u, s=0.008: torch.cos(u / (1 + s) * math.pi / 2) ** 2, "offset s")]:
        with pytest.raises(checks.ExerciseError, match=named):
            checks.check_cosine_schedule(wrong_f, betas)

    def t_points(alpha_bar, T, max_beta=0.999):  # noqa: N803
        abar = alpha_bar(torch.arange(T, dtype=torch.float64) / T)
        return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)

    def unclipped(alpha_bar, T, max_beta=0.999):  # noqa: N803
        abar = alpha_bar(torch.arange(T + 1, dtype=torch.float64) / T)
        return 1 - abar[1:] / abar[:-1]

    def difference(alpha_bar, T, max_beta=0.999):  # noqa: N803
        abar = alpha_bar(torch.arange(T + 1, dtype=torch.float64) / T)
        return (abar[:-1] - abar[1:]).clamp(max=max_beta)

    for wrong_b, named in [(t_points, "T \\+ 1 points"), (unclipped, "clipped to max_beta"), (difference, "RATIO")]:
        with pytest.raises(checks.ExerciseError, match=named):
            checks.check_cosine_schedule(f, wrong_b)
    capsys.readouterr()
    got_f, got_b = checks.check_cosine_schedule(skipped, skipped)
    assert got_f is cosine_alpha_bar and got_b is betas_from_alpha_bar
    assert capsys.readouterr().out.count("skipped this exercise") == 2


def _chain(*, fresh=True, noise_sqrt=True, record="after", order=list, signal=None, noise=None):
    """A learner's forward_chain, right by default, with one mistake switched on."""
    def run(x0, schedule, keep):
        x, kept, eps = x0, {}, torch.randn_like(x0)
        for t in range(max(keep) + 1):
            eps = torch.randn_like(x) if fresh and t else eps
            beta = schedule.betas[t]
            keep_x = (1 - beta).sqrt() if signal is None else signal(schedule, t)
            add = (beta.sqrt() if noise_sqrt else beta) if noise is None else noise(schedule, t)
            new = keep_x * x + add * eps
            kept[t], x = (x if record == "before" else new), new
        return torch.stack([kept[t] for t in order(keep)])
    return run


def test_forward_chain_right_wrong_and_skipped(capsys):
    from diffedu.forward import forward_chain, q_sample
    from diffedu.schedules import linear_beta_schedule

    learner = _chain()
    assert checks.check_forward_chain(learner) is learner

    def predrawn(x0, schedule, keep):  # right in distribution, but the noises come from one call
        noises, x, kept = torch.randn(max(keep) + 1, *x0.shape), x0, {}
        for t in range(max(keep) + 1):
            x = (1 - schedule.betas[t]).sqrt() * x + schedule.betas[t].sqrt() * noises[t]
            kept[t] = x
        return torch.stack([kept[t] for t in keep])

    for wrong, named in [(predrawn, "nothing wrong with the math"),
                         (_chain(signal=lambda s, t: 1 - s.betas[t]), "signal term lacks its square root"),
                         (_chain(fresh=False), "one noise for every step"),
                         (_chain(noise_sqrt=False), "noise term lacks its square root"),
                         (_chain(signal=lambda s, t: s.alphas_cumprod[t].sqrt(),
                                 noise=lambda s, t: (1 - s.alphas_cumprod[t]).sqrt()), "alpha-bar_t, the signal left"),
                         (_chain(record="before"), "off by one step"),
                         (_chain(order=sorted), "keep's own order"),
                         (lambda x0, s, keep: torch.stack([q_sample(x0, torch.full((len(x0),), t),
                                                                    torch.randn_like(x0), s) for t in keep]),
                          "closed form")]:
        with pytest.raises(checks.ExerciseError, match=named):
            checks.check_forward_chain(wrong)
    capsys.readouterr()
    assert checks.check_forward_chain(skipped) is forward_chain
    assert "skipped this exercise" in capsys.readouterr().out
    # the library's chain lands where the closed form says, in distribution: mean sqrt(abar) x0, variance 1 - abar
    schedule = linear_beta_schedule(1000)
    torch.manual_seed(0)
    x_t = forward_chain(torch.full((20_000, 1), 0.7), schedule, [999, 300])
    for got, t in zip(x_t, (999, 300)):
        abar = schedule.alphas_cumprod[t].item()
        assert abs(got.mean().item() - 0.7 * abar ** 0.5) < 0.03 and abs(got.var().item() - (1 - abar)) < 0.03
    with pytest.raises(ValueError, match="keep must name"):
        forward_chain(torch.zeros(2, 1), schedule, [1000])


def _invert_loop(*, eps_at="current", first="data", reverse=True):
    from diffedu.samplers import ddim_timesteps, predict

    def invert(model, schedule, x0, steps):
        timesteps = ddim_timesteps(schedule.T, steps)
        timesteps = timesteps[::-1] if reverse else timesteps
        x = x0
        for i, t in enumerate(timesteps):
            s = timesteps[i - 1] if i > 0 else t
            pred_x0, eps = predict(model, x, s if eps_at == "current" else t, schedule)
            if i == 0 and first == "data":
                pred_x0 = x0
            abar = schedule.alphas_cumprod[t]
            x = abar.sqrt() * pred_x0 + (1 - abar).sqrt() * eps
        return x

    return invert


def test_ddim_invert_right_wrong_and_skipped(capsys):
    right = _invert_loop()
    assert checks.check_ddim_invert(right) is right
    for wrong, named in [(_invert_loop(eps_at="next"), "CURRENT point"), (_invert_loop(reverse=False), "upwards"),
                         (_invert_loop(first="model"), "starts at the data itself")]:
        with pytest.raises(checks.ExerciseError, match=named):
            checks.check_ddim_invert(wrong)

    def int_t(model, schedule, x0, steps):
        return model(x0, 0)

    with pytest.raises(checks.ExerciseError, match=r"integer tensor of shape \(B,\)"):
        checks.check_ddim_invert(int_t)
    fallback = checks.check_ddim_invert(skipped)
    assert "skipped this exercise" in capsys.readouterr().out
    from diffedu.schedules import make_schedule
    schedule, x0 = make_schedule("linear", T=100), torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    model = lambda x, t: 0.3 * x  # noqa: E731
    assert torch.allclose(fallback(model, schedule, x0, 10), right(model, schedule, x0, 10))


def test_guided_output_right_wrong_and_skipped(capsys):
    from diffedu.guidance import cfg_combine, guided_output

    def right(model, x_t, t, y, null, w):
        B = x_t.shape[0]  # noqa: N806
        out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, int(null))]))
        return cfg_combine(out[:B], out[B:], w)

    def two_calls(model, x_t, t, y, null, w):
        return cfg_combine(model(x_t, t, y), model(x_t, t, torch.full_like(y, int(null))), w)

    def swapped(model, x_t, t, y, null, w):
        B = x_t.shape[0]  # noqa: N806
        out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([torch.full_like(y, int(null)), y]))
        return cfg_combine(out[:B], out[B:], w)

    def t_once(model, x_t, t, y, null, w):
        B = x_t.shape[0]  # noqa: N806
        out = model(torch.cat([x_t, x_t]), t, torch.cat([y, torch.full_like(y, int(null))]))
        return cfg_combine(out[:B], out[B:], w)

    assert checks.check_guided_output(right) is right
    for wrong, named in [(two_calls, "ONE batch of 2B"), (swapped, "halves are swapped"), (t_once, "Double t")]:
        with pytest.raises(checks.ExerciseError, match=named):
            checks.check_guided_output(wrong)
    capsys.readouterr()
    assert checks.check_guided_output(skipped) is guided_output
    assert "skipped this exercise" in capsys.readouterr().out


def test_min_snr_weight_right_wrong_and_skipped(capsys):
    from diffedu.losses import min_snr_weight

    def weights(t, schedule, gamma, prediction="eps", v_over=1.0, clip="max"):
        abar = schedule.alphas_cumprod[t].float()
        snr = abar / (1 - abar)
        capped = snr.clamp(max=gamma) if clip == "max" else snr.clamp(min=gamma)
        return {"eps": capped / snr, "x0": capped, "v": capped / (snr + v_over)}[prediction]

    assert checks.check_min_snr_weight(weights) is weights
    for wrong, named in [(lambda t, s, g, p="eps": weights(t, s, g, p, v_over=0.0), "SNR \\+ 1"),
                         (lambda t, s, g, p="eps": weights(t, s, g, p, clip="min"), "from ABOVE"),
                         (lambda t, s, g, p="eps": weights(t, s, g, "x0"), "eps network's weight")]:
        with pytest.raises(checks.ExerciseError, match=named):
            checks.check_min_snr_weight(wrong)
    capsys.readouterr()
    assert checks.check_min_snr_weight(skipped) is min_snr_weight


def test_vae_objective_right_wrong_and_skipped(capsys):
    from diffedu.models.vae import kl_divergence, reparameterize

    def objective(vae, x, beta, eps=None, decode_mean=False, per_pixel=False):
        mu, logvar = vae.posterior(x)
        z = mu if decode_mean else reparameterize(mu, logvar, eps)
        error = (vae.decode_unscaled(z) - x).square().flatten(1)
        recon = (error.mean(dim=1) if per_pixel else error.sum(dim=1)).mean()
        kl = kl_divergence(mu, logvar).mean()
        return recon + beta * kl, recon, kl

    assert checks.check_vae_objective(objective) is objective
    for wrong, named in [(lambda v, x, b, e=None: objective(v, x, b, e, decode_mean=True), "SAMPLE z"),
                         (lambda v, x, b, e=None: objective(v, x, b, e, per_pixel=True), "SUMS the squared error")]:
        with pytest.raises(checks.ExerciseError, match=named):
            checks.check_vae_objective(wrong)
    capsys.readouterr()
    fallback = checks.check_vae_objective(skipped)
    assert "skipped this exercise" in capsys.readouterr().out and fallback is not skipped


def test_shift_schedule_right_wrong_and_skipped(capsys):
    from diffedu.schedules import make_schedule, schedule_from_betas, shift_schedule, snr

    def shifted(schedule, factor, power=2):
        abar = schedule.alphas_cumprod.double()
        new = abar / (1 - abar) / factor**power
        new = new / (1 + new)
        before = torch.cat([torch.ones(1, dtype=torch.float64), new[:-1]])
        return schedule_from_betas((1 - new / before).clamp(max=0.999))

    assert checks.check_shift_schedule(shifted) is shifted
    with pytest.raises(checks.ExerciseError, match="factor SQUARED"):
        checks.check_shift_schedule(lambda s, f: shifted(s, f, power=1))
    capsys.readouterr()
    assert checks.check_shift_schedule(skipped) is shift_schedule
    linear = make_schedule("linear", 1000)
    ratio = snr(linear)[:900] / snr(shift_schedule(linear, 2.0))[:900]
    assert torch.allclose(ratio, torch.full_like(ratio, 4.0), rtol=1e-3)  # SNR divided by factor^2, where unclipped
    with pytest.raises(ValueError, match="positive number"):
        shift_schedule(linear, 0)
