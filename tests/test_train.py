"""The training loop: learning, EMA, warm-up, clipping, checkpoints, resumption, Ctrl-C, divergence."""

import json
import os
import signal
import zipfile

import pytest
import torch
from torch import nn

from diffedu import pretrained, train_cli
from diffedu.checkpoints import CheckpointError, load_checkpoint
from diffedu.data import toy_2d
from diffedu.ema import EMA, make_ema
from diffedu.models.mlp import MLPDenoiser
from diffedu.models.unet import UNet, UNetConfig
from diffedu.schedules import make_schedule
from diffedu.train import (
    TrainConfig,
    TrainingDiverged,
    drop_labels,
    learning_rate,
    scale_learning_rate,
    train,
    train_step,
)

S = make_schedule("cosine", 50)
POINTS = toy_2d("moons", 512, generator=torch.Generator().manual_seed(0)) / 2  # (512, 2) in about [-1, 1]
IMAGES = torch.rand(64, 1, 8, 8) * 2 - 1


def tiny_unet(seed: int = 0, **overrides) -> UNet:
    torch.manual_seed(seed)
    config = dict(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4)
    return UNet(UNetConfig(**{**config, **overrides}))


def mlp(seed: int = 0) -> MLPDenoiser:
    torch.manual_seed(seed)
    return MLPDenoiser(hidden=32, depth=2, time_dim=16)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 30, "batch_size": 32, "warmup_steps": 5, "lr": 3e-3, **kw})


def run(model=None, data=POINTS, **kw) -> "object":
    return train(model if model is not None else mlp(), data, S, kw.pop("config", cfg()), device="cpu",
                 progress=False, **kw)


def params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.state_dict().values()]


def test_the_loss_goes_down_on_a_toy_problem():
    result = run(config=cfg(steps=150, batch_size=128, warmup_steps=10))
    assert result.step == len(result.losses) == 150 and not result.interrupted
    first, last = sum(result.losses[:20]) / 20, sum(result.losses[-50:]) / 50
    assert last < 0.8 * first, (first, last)
    assert result.images_per_second > 0 and result.seconds > 0


def test_ema_is_a_separate_eval_mode_copy_that_lags_the_model():
    result = run(config=cfg(steps=40, ema_decay=0.9))
    assert not result.ema.training and result.ema is not result.model
    assert type(result.ema) is type(result.model)
    assert not all(torch.equal(a, b) for a, b in zip(params(result.ema), params(result.model)))
    x = torch.randn(4, 2)
    assert torch.isfinite(result.ema(x, torch.zeros(4, dtype=torch.long))).all()


def test_ema_update_follows_its_formula_with_warm_up():
    model = nn.Linear(1, 1, bias=False)
    ema = make_ema(model, decay=0.5)
    values = [1.0, 2.0, 4.0]
    for v in values:
        model.weight.data.fill_(v)
        ema.update_parameters(model)
    # n=0: copy (1.0); n=1: d = min(0.5, 2/11) -> 2/11 * 1 + 9/11 * 2; n=2: d = min(0.5, 3/12) = 0.25
    second = 2 / 11 * 1.0 + 9 / 11 * 2.0
    assert ema.module.weight.item() == pytest.approx(0.25 * second + 0.75 * 4.0)
    assert not ema.module.training


def test_warm_up_is_linear_then_constant_or_cosine():
    c = TrainConfig(steps=100, lr=1e-3, warmup_steps=10)
    assert [learning_rate(s, c) for s in (0, 4, 9, 10, 99)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    cos = TrainConfig(steps=110, lr=1e-3, warmup_steps=10, lr_decay="cosine")
    assert learning_rate(10, cos) == pytest.approx(1e-3)
    assert learning_rate(60, cos) == pytest.approx(5e-4)
    assert learning_rate(110, cos) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(0, TrainConfig(steps=5, lr=1e-3, warmup_steps=0)) == 1e-3


def test_the_optimizer_uses_the_warm_up_learning_rate():
    seen = []
    run(config=cfg(steps=4, preview_every=1, warmup_steps=4, lr=4e-3),
        callback=lambda info: seen.append((info["step"], info["lr"])))
    assert seen == [(1, 1e-3), (2, 2e-3), (3, 3e-3), (4, 4e-3)]


def test_gradient_clipping_bounds_the_global_norm():
    model = mlp()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(30)  # huge outputs, huge gradients
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x0 = POINTS[:64]
    loss, norm = train_step(model, opt, x0, S, grad_clip=0.5, generator=torch.Generator().manual_seed(0))
    assert norm.item() > 0.5  # it needed clipping
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert clipped.item() <= 0.5 + 1e-4
    _, norm = train_step(model, opt, x0, S, grad_clip=None)
    assert norm is None


def test_bad_configs_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="budget"):
        TrainConfig()
    with pytest.raises(ValueError, match="'auto', 'bf16', 'off'"):
        TrainConfig(steps=1, amp="fp8")
    with pytest.raises(ValueError, match="cosine"):
        TrainConfig(seconds=1.0, lr_decay="cosine")
    with pytest.raises(ValueError, match="labels"):
        run(config=cfg(cond_drop_prob=0.1))


def test_an_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    config = cfg(steps=24, checkpoint_every=5, ema_decay=0.9)
    full = run(mlp(), config=config)

    def stop_at_13(info):
        if info["step"] == 13:
            raise KeyboardInterrupt

    path = tmp_path / "run.pt"
    first = run(mlp(), config=cfg(steps=24, checkpoint_every=5, ema_decay=0.9, preview_every=1),
                checkpoint=path, callback=stop_at_13)
    assert first.interrupted and first.step == 13 and path.exists()
    torch.manual_seed(123)  # a "new process": other global RNG state, freshly initialised model
    resumed = run(mlp(seed=7), config=config, checkpoint=path)
    assert resumed.step == 24 and not resumed.interrupted
    assert resumed.losses == pytest.approx(full.losses, abs=1e-6)
    for a, b in zip(params(full.model), params(resumed.model)):
        assert torch.allclose(a, b, atol=1e-6)
    for a, b in zip(params(full.ema), params(resumed.ema)):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_shorter_budget_then_a_longer_one_continues_exactly(tmp_path):
    full = run(tiny_unet(), IMAGES, config=cfg(steps=12))
    path = tmp_path / "unet.pt"
    run(tiny_unet(), IMAGES, config=cfg(steps=5), checkpoint=path)
    torch.manual_seed(5)
    resumed = run(tiny_unet(), IMAGES, config=cfg(steps=12), checkpoint=path)
    assert all(torch.equal(a, b) for a, b in zip(params(full.model), params(resumed.model)))
    again = run(tiny_unet(), IMAGES, config=cfg(steps=12), checkpoint=path)  # budget already spent: loads only
    assert again.step == 12 and all(torch.equal(a, b) for a, b in zip(params(full.ema), params(again.ema)))


def test_checkpoints_hold_only_state_dicts_and_load_with_weights_only(tmp_path):
    path = tmp_path / "ckpt.pt"
    run(tiny_unet(), IMAGES, config=cfg(steps=3), checkpoint=path)
    state = torch.load(path, weights_only=True)
    assert state["format"] == "diffedu-checkpoint" and state["step"] == 3 and len(state["losses"]) == 3
    assert state["model_config"]["base_channels"] == 8 and state["train_config"]["steps"] == 3
    assert state["schedule"]["T"] == S.T
    model = tiny_unet()
    load_checkpoint(path, model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), state["model"].values()))


def test_a_failed_write_leaves_the_old_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    run(config=cfg(steps=3), checkpoint=path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        run(config=cfg(steps=6), checkpoint=path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_unreadable_checkpoints_are_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    good = tmp_path / "good.pt"
    run(config=cfg(steps=2), checkpoint=good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    (tmp_path / "junk.pt").write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(mlp(), POINTS, S, cfg(), checkpoint=tmp_path / "junk.pt", device="cpu", progress=False)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": mlp().state_dict()}, foreign)
    with pytest.raises(CheckpointError,
                       match=r"is not a training checkpoint: it is a dict with keys \['state_dict'\], not a diffedu file"):
        load_checkpoint(foreign)
    assert issubclass(CheckpointError, ValueError) and zipfile.is_zipfile(good)


def test_a_checkpoint_of_another_model_names_keys_shapes_and_configs(tmp_path):
    path = tmp_path / "unet8.pt"
    run(tiny_unet(), IMAGES, config=cfg(steps=2), checkpoint=path)
    with pytest.raises(CheckpointError) as info:
        run(tiny_unet(base_channels=16, norm_groups=4), IMAGES, config=cfg(steps=4), checkpoint=path)
    message = str(info.value)
    assert "shapes differ" in message and "time_embed.mlp.0.weight: file (32, 8) vs model (64, 16)" in message
    assert "base_channels=8 (this model: 16)" in message


def test_ctrl_c_saves_and_returns_what_was_trained(tmp_path):
    def press_ctrl_c(info):
        if info["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Jupyter's stop button sends

    path, before = tmp_path / "ctrl_c.pt", signal.getsignal(signal.SIGINT)
    result = run(config=cfg(steps=50, preview_every=1), checkpoint=path, callback=press_ctrl_c)
    assert result.interrupted and result.step == 3 and len(result.losses) == 3
    assert load_checkpoint(path)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored

    def raise_interrupt(info):
        raise KeyboardInterrupt

    in_memory = run(config=cfg(steps=50, preview_every=2), callback=raise_interrupt)
    assert in_memory.interrupted and in_memory.step == 2 and in_memory.checkpoint is None


def test_a_non_finite_loss_stops_with_advice(tmp_path):
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.calls = nn.Parameter(torch.ones(())), 0

        def forward(self, x, t):
            self.calls += 1
            return x * self.w * (float("inf") if self.calls >= 2 else 1.0)

    path = tmp_path / "nan.pt"
    with pytest.raises(TrainingDiverged, match=r"step 2 .*lower learning rate.*\[-1, 1\].*amp") as info:
        run(Exploding(), config=cfg(steps=20), checkpoint=path)
    assert "step 2" in str(info.value) and not path.exists()


def test_class_labels_with_dropout_reach_a_conditional_unet():
    labels = torch.arange(64) % 3
    dropped = drop_labels(labels, 0.5, 3, torch.Generator().manual_seed(0))
    assert set(dropped.tolist()) <= {0, 1, 2, 3} and (dropped == 3).float().mean().item() == pytest.approx(0.5, abs=0.2)
    assert torch.equal(drop_labels(labels, 0.0, 3), labels)
    result = run(tiny_unet(num_classes=3), IMAGES, config=cfg(steps=4, cond_drop_prob=0.2), labels=labels)
    assert result.step == 4 and all(map(torch.isfinite, map(torch.tensor, result.losses)))
    with pytest.raises(ValueError, match="conditional"):
        run(tiny_unet(num_classes=3), IMAGES, config=cfg(steps=2))


def test_the_speed_switches_run_on_the_cpu():
    result = run(tiny_unet(), IMAGES, config=cfg(steps=3, amp="bf16", channels_last=True))
    assert result.step == 3 and all(map(torch.isfinite, map(torch.tensor, result.losses)))
    assert result.model.stem.weight.is_contiguous(memory_format=torch.channels_last)


class Spy(nn.Module):
    """Wraps a model and records, at each forward, the input's layout and the autocast state."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x, t, cond=None):
        self.seen.append((x.is_contiguous(memory_format=torch.channels_last), torch.is_autocast_enabled("cpu"),
                          torch.get_autocast_dtype("cpu")))
        return self.model(x, t)


def test_each_speed_switch_takes_effect(monkeypatch):
    rgb = torch.rand(16, 3, 8, 8) * 2 - 1  # 3 channels: with one, NCHW and NHWC are the same layout
    spy = Spy(tiny_unet(in_channels=3))
    run(spy, rgb, config=cfg(steps=2))
    assert spy.seen == [(False, False, spy.seen[0][2])] * 2  # the baseline: fp32, NCHW
    spy = Spy(tiny_unet(in_channels=3))
    run(spy, rgb, config=cfg(steps=2, amp="bf16", channels_last=True))
    assert spy.seen == [(True, True, torch.bfloat16)] * 2

    made = {}
    real_adamw = torch.optim.AdamW

    def adamw(params, **kwargs):
        made.update(kwargs)
        return real_adamw(params, **kwargs)

    compiled = []
    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or model)
    run(tiny_unet(), IMAGES, config=cfg(steps=1, fused_adam=True, compile=True))
    assert made["fused"] is True and len(compiled) == 1
    run(tiny_unet(), IMAGES, config=cfg(steps=1))
    assert made["fused"] is None and len(compiled) == 1


def test_both_ema_implementations_give_the_same_average(monkeypatch):
    a, b = (run(tiny_unet(), IMAGES, config=cfg(steps=6, ema_decay=0.8, ema_impl=impl)) for impl in ("foreach", "swa_utils"))
    assert all(torch.equal(x, y) for x, y in zip(params(a.model), params(b.model)))
    assert all(torch.allclose(x, y, atol=1e-7) for x, y in zip(params(a.ema), params(b.ema)))
    assert not all(torch.equal(x, y) for x, y in zip(params(a.ema), params(a.model)))

    def no_swa(self, model):
        raise AssertionError("the foreach EMA must not call AveragedModel.update_parameters")

    monkeypatch.setattr(torch.optim.swa_utils.AveragedModel, "update_parameters", no_swa)
    ema = make_ema(nn.Linear(2, 2), decay=0.5)
    assert isinstance(ema, EMA) and ema.impl == "foreach"
    ema.update_parameters(nn.Linear(2, 2))
    state = ema.state_dict()
    assert int(state["n_averaged"]) == 1 and {"module.weight", "module.bias"} <= state.keys()
    with pytest.raises(ValueError, match="'foreach', 'swa_utils'"):
        TrainConfig(steps=1, ema_impl="loop")


def test_learning_rate_scales_with_the_batch_by_the_chosen_rule():
    assert scale_learning_rate(1e-3, 512, 128) == pytest.approx(2e-3)  # sqrt(4) = 2, the default for Adam
    assert scale_learning_rate(1e-3, 512, 128, "linear") == pytest.approx(4e-3)
    assert scale_learning_rate(1e-3, 32, 128, "sqrt") == pytest.approx(5e-4)
    assert scale_learning_rate(3e-4, 64, 64) == pytest.approx(3e-4)
    with pytest.raises(ValueError, match="'sqrt', 'linear'"):
        scale_learning_rate(1e-3, 256, 128, "cubic")


def test_the_command_line_trains_and_writes_a_record(tmp_path, monkeypatch):
    monkeypatch.setattr(train_cli, "weights_dir", lambda: tmp_path / "weights")
    out = tmp_path / "cli.pt"
    argv = ["--dataset", "mnist", "--limit", "64", "--steps", "2", "--batch-size", "4", "--T", "50",
            "--out", str(out), "--export", "cli_test", "--lr-base-batch", "16", "--ema-impl", "swa_utils"]
    with pytest.warns(UserWarning, match="sample"):
        result = train_cli.main(argv)
    record = json.loads(out.with_suffix(".json").read_text())
    assert result.step == record["steps"] == 2 and record["T"] == 50 and record["torch"] == torch.__version__
    assert record["command"].startswith("python -m diffedu.train --dataset mnist") and record["images_per_second"] > 0
    assert record["train_config"]["lr"] == pytest.approx(5e-4) and record["train_config"]["ema_impl"] == "swa_utils"
    assert record["processes"] == 1
    model, schedule, info = pretrained.load_pretrained("cli_test", "cpu", directory=tmp_path / "weights")
    assert model.config.image_size == 28 and schedule.T == 50 and info["record"]["steps"] == 2


def test_a_seconds_budget_stops_training():
    result = run(config=TrainConfig(seconds=0.5, batch_size=16, warmup_steps=0))
    assert result.step > 0 and result.seconds >= 0.5 and not result.interrupted


def test_exported_weights_load_as_an_eval_mode_unet(tmp_path):
    path = tmp_path / "run.pt"
    result = run(tiny_unet(), IMAGES, config=cfg(steps=3), checkpoint=path)
    out = pretrained.export_weights(path, tmp_path / "tiny.pt", name="tiny", record={"minutes": 0.1, "note": "test"})
    assert torch.load(out, weights_only=True)["dtype"] == "float32"
    assert pretrained.available(tmp_path) == ["tiny"]  # the training checkpoint run.pt is not listed
    model, schedule, info = pretrained.load_pretrained("tiny", "cpu", directory=tmp_path)
    assert not model.training and schedule.T == S.T and schedule.name == "cosine"
    assert info["prediction"] == "eps" and info["record"]["note"] == "test" and info["step"] == 3
    for a, b in zip(model.state_dict().values(), result.ema.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="available: 'tiny'"):
        pretrained.load_pretrained("nope", directory=tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m diffedu.train"):
        pretrained.load_pretrained("mnist_ddpm", directory=tmp_path / "empty")


def test_the_lesson_check_of_the_scaling_rule_names_the_common_mistakes():
    import math

    from diffedu.course.checks import ExerciseError
    from diffedu.course.checks.lesson06 import check_scale_learning_rate

    assert check_scale_learning_rate(scale_learning_rate) is scale_learning_rate
    with pytest.raises(ExerciseError, match="upside down"):
        check_scale_learning_rate(lambda lr, b, b0, rule="sqrt": lr * (b0 / b if rule == "linear" else math.sqrt(b0 / b)))
    with pytest.raises(ExerciseError, match="swapped"):
        check_scale_learning_rate(lambda lr, b, b0, rule="sqrt": lr * (math.sqrt(b / b0) if rule == "linear" else b / b0))


def test_min_snr_gamma_is_checked_and_cpu_bf16_probe_answers():
    with pytest.raises(ValueError, match="min_snr_gamma must be positive"):
        TrainConfig(steps=1, min_snr_gamma=0.0)
    from diffedu.devices import cpu_has_bf16

    assert isinstance(cpu_has_bf16(), bool)
