"""Hostile inputs and faults: each is refused (or warned about) with one message that names the problem and the fix.

Grouped as in issue 15: a model used differently from how it was trained; data that is wrong but plausible;
options replaced instead of refused; a default that surprises; mixed precision or devices; then the errors that
were obscure: checkpoints and weights, where a checkpoint cannot be written, two Ctrl-C, the networks' inputs,
the lesson generator, text prompts, exercise checks.
"""

import json
import os
import signal
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from diffedu import data, train_cli
from diffedu import train as train_module
from diffedu.checkpoints import CheckpointError, load_checkpoint
from diffedu.course import lessons
from diffedu.course.checks import lesson01
from diffedu.course.checks.core import ExerciseError
from diffedu.flow import flow_loss, flow_sample
from diffedu.forward import DataRangeWarning, q_sample
from diffedu.latent import load_vae
from diffedu.losses import ddpm_loss
from diffedu.models.classifier import load_classifier
from diffedu.models.mlp import MLPDenoiser
from diffedu.models.text import Tokenizer
from diffedu.models.unet import UNet, UNetConfig
from diffedu.pretrained import load_pretrained
from diffedu.provenance import provenance_of
from diffedu.samplers import ddim_invert, ddim_sample, ddpm_sample
from diffedu.schedules import make_schedule
from diffedu.text2img import Text2Img, generate, mnist_pixel_text
from diffedu.train import TrainConfig, train

WEIGHTS = Path(__file__).resolve().parents[1] / "diffedu" / "weights"
LINEAR = make_schedule("linear", 1000)


def tiny_unet(**overrides) -> UNet:
    torch.manual_seed(0)
    config = dict(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4)
    return UNet(UNetConfig(**{**config, **overrides}))


def images(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def quick_train(model, x, schedule, path=None, **config):
    config = TrainConfig(**{"steps": 3, "batch_size": 8, "warmup_steps": 1, **config})
    return train(model, x, schedule, config, checkpoint=path, device="cpu", progress=False)


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained("mnist_ddpm", "cpu")


# ------------------------------------------------------------------ a model used differently from how it was trained


def test_a_shipped_model_sampled_with_another_schedule_is_refused(shipped):
    model, _, _ = shipped
    with pytest.raises(ValueError, match=r"trained with the 'linear' schedule \(T = 1000\), but it is being sampled "
                                         r"with the 'cosine' schedule.*pass the schedule it was trained with"):
        ddim_sample(model, make_schedule("cosine", 1000), (1, 1, 28, 28), steps=2, progress=False)
    with pytest.raises(ValueError, match=r"'linear' schedule \(T = 1000\).*'linear' schedule \(T = 500\)"):
        ddpm_sample(model, make_schedule("linear", 500), (1, 1, 28, 28), progress=False)


def test_a_shipped_model_sampled_with_another_prediction_is_refused(shipped):
    model, schedule, _ = shipped
    with pytest.raises(ValueError, match="trained to predict 'eps', but prediction='v' was asked; leave prediction out"):
        ddim_sample(model, schedule, (1, 1, 28, 28), steps=2, prediction="v", progress=False)
    with pytest.raises(ValueError, match="trained to predict 'eps', but prediction='x0'"):
        ddim_invert(model, schedule, torch.zeros(1, 1, 28, 28), steps=2, prediction="x0", progress=False)


def test_a_model_trained_here_knows_its_prediction_and_schedule():
    x = images()
    result = quick_train(tiny_unet(), x, make_schedule("cosine", 50), prediction="v")
    made = provenance_of(result.ema)
    assert made is not None and made.prediction == "v" and made.schedule == "cosine" and made.T == 50 and made.images
    with pytest.raises(ValueError, match="trained to predict 'v', but prediction='eps'"):
        ddim_sample(result.ema, make_schedule("cosine", 50), (1, 1, 8, 8), steps=2, prediction="eps", progress=False)
    # Left out, the prediction is the model's own: the same as asking for "v" explicitly.
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    own = ddim_sample(result.ema, make_schedule("cosine", 50), (2, 1, 8, 8), steps=3, x_T=noise, progress=False)
    asked = ddim_sample(result.ema, make_schedule("cosine", 50), (2, 1, 8, 8), steps=3, x_T=noise, prediction="v",
                        clip_x0=True, progress=False)
    assert torch.equal(own, asked)


def test_flow_and_diffusion_models_go_to_their_own_samplers(shipped):
    model, _, _ = shipped
    with pytest.raises(ValueError, match="is a diffusion model predicting 'eps'.*sample it with ddim_sample"):
        flow_sample(model, (1, 1, 28, 28), steps=2, progress=False)
    flow_model, schedule, _ = load_pretrained("mnist_flow", "cpu")
    assert schedule is None
    with pytest.raises(ValueError, match="trained with flow matching.*diffedu.flow.flow_sample"):
        ddim_sample(flow_model, LINEAR, (1, 1, 28, 28), steps=2, progress=False)


def test_resuming_with_another_prediction_or_schedule_is_refused(tmp_path):
    path, x = tmp_path / "run.pt", images()
    quick_train(tiny_unet(), x, make_schedule("linear", 100), path)
    with pytest.raises(CheckpointError, match="trained to predict 'eps', this run asks for 'v'.*prediction='eps'"):
        quick_train(tiny_unet(), x, make_schedule("linear", 100), path, steps=6, prediction="v")
    with pytest.raises(CheckpointError, match=r"'linear' schedule \(T = 100\), this run passes the 'cosine' schedule "
                                              r"\(T = 100\).*make_schedule\('linear', 100\)"):
        quick_train(tiny_unet(), x, make_schedule("cosine", 100), path, steps=6)
    assert quick_train(tiny_unet(), x, make_schedule("linear", 100), path, steps=6).step == 6  # the same: resumes


# ------------------------------------------------------------------ data that is wrong but plausible


def test_one_nan_image_among_thousands_stops_training_before_it_starts():
    x = images(4000)
    x[2718, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values in 1 of 4000 examples \\(the first at index 2718\\)"):
        quick_train(tiny_unet(), x, LINEAR)


def test_images_in_zero_one_are_warned_about():
    x = (images() + 1) / 2
    with pytest.warns(DataRangeWarning, match=r"lie in \[0, 1\], but diffusion here expects \[-1, 1\].*x \* 2 - 1"):
        quick_train(tiny_unet(), x, LINEAR)
    with pytest.warns(DataRangeWarning, match="x \\* 2 - 1"):
        ddpm_loss(tiny_unet(), x[:4], LINEAR)
    with warnings.catch_warnings():  # the same images in [-1, 1]: nothing to say
        warnings.simplefilter("error", DataRangeWarning)
        ddpm_loss(tiny_unet(), images(4), LINEAR)


def test_an_empty_batch_is_refused_not_a_nan_loss():
    for loss in (lambda x: ddpm_loss(tiny_unet(), x, LINEAR), lambda x: flow_loss(tiny_unet(), x)):
        with pytest.raises(ValueError, match=r"x0 is an empty batch, shape \(0, 1, 8, 8\): give at least one example"):
            loss(images()[:0])


@pytest.fixture()
def data_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_tv_present", lambda name: False)
    monkeypatch.setenv("DIFFEDU_OFFLINE", "1")
    return tmp_path


def test_an_npz_with_zero_images_is_refused(data_folder, monkeypatch):
    np.savez(data_folder / "mnist_train.npz", x=np.zeros((0, 28, 28), np.uint8), y=np.zeros((0,), np.int64))
    monkeypatch.setenv("DIFFEDU_DATA", str(data_folder))
    with pytest.raises(ValueError, match="mnist_train.npz.*holds no images"):
        data.load_dataset("mnist")


def test_diffedu_data_that_is_not_a_folder_is_an_error(data_folder, monkeypatch):
    monkeypatch.setenv("DIFFEDU_DATA", str(data_folder / "missing"))
    with pytest.raises(data.DataNotFoundError, match="missing does not exist: point it at the folder that holds "
                                                     "mnist_train.npz"):
        data.load_dataset("mnist")
    (data_folder / "file.npz").write_bytes(b"")
    monkeypatch.setenv("DIFFEDU_DATA", str(data_folder / "file.npz"))
    with pytest.raises(data.DataNotFoundError, match="file.npz is a file, not a folder"):
        data.load_dataset("mnist")


def test_an_empty_diffedu_data_folder_is_named_in_the_sample_warning(data_folder, monkeypatch):
    (data_folder / "empty").mkdir()
    monkeypatch.setenv("DIFFEDU_DATA", str(data_folder / "empty"))
    with pytest.warns(data.SampleDataWarning, match="not the full dataset \\(DIFFEDU_DATA=.*empty: no mnist_test.npz"):
        data.load_dataset("mnist", "test")


# ------------------------------------------------------------------ options replaced instead of refused


@pytest.mark.parametrize("flag", ["--batch-size", "--threads", "--steps", "--minutes", "--limit", "--checkpoint-every"])
def test_zero_or_negative_options_are_refused_by_the_training_command(flag, capsys, tmp_path):
    values = ("-2",) if flag == "--minutes" else ("0", "-2")  # --minutes 0 means no time budget (train --steps)
    for value in values:
        with pytest.raises(SystemExit):
            train_cli.main(["--out", str(tmp_path / "x.pt"), flag, value])
        above = "at least 0" if flag == "--minutes" else "above 0"
        assert f"argument {flag}: must be {above}, got {value}" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_negative_or_nan_timesteps_never_reach_the_network():
    model = tiny_unet()
    with pytest.raises(ValueError, match=r"t holds negative timesteps \(down to -1\)"):
        model(images(2), torch.tensor([-1, 5]))
    with pytest.raises(ValueError, match="NaN or infinite timesteps"):
        model(images(2), torch.tensor([float("nan"), 0.5]))
    assert model(images(2), torch.tensor([0.25, 999.0])).shape == (2, 1, 8, 8)  # flow matching's float times stay legal


# ------------------------------------------------------------------ a default that surprises


def test_ddim_with_defaults_gives_images_in_range_for_an_image_model(shipped):
    model, schedule, _ = shipped
    out = ddim_sample(model, schedule, (16, 1, 28, 28), steps=20, generator=torch.Generator().manual_seed(0),
                      progress=False)
    assert out.abs().max() <= 1.0 + 1e-5
    raw = ddim_sample(model, schedule, (16, 1, 28, 28), steps=20, generator=torch.Generator().manual_seed(0),
                      clip_x0=False, progress=False)
    # asked for, the unclamped x0 is still available: its samples leave [-1, 1] a little
    assert raw.abs().max() > 1.0 + 1e-3 and not torch.allclose(raw, out)


def test_no_clamping_by_default_for_latents_or_points():
    latent, _, _ = load_pretrained("mnist_latent", "cpu")
    assert not provenance_of(latent).images
    points = quick_train(MLPDenoiser(hidden=16, depth=1, time_dim=8), torch.randn(64, 2) * 3, LINEAR)
    assert not provenance_of(points.ema).images


# ------------------------------------------------------------------ mixed precision or devices


def test_noise_of_another_dtype_or_device_is_refused():
    x = images(2)
    with pytest.raises(TypeError, match="eps is a torch.float64 tensor on cpu, x0 a torch.float32.*torch.randn_like"):
        q_sample(x, torch.tensor([1, 2]), x.double(), LINEAR)
    with pytest.raises(TypeError, match="eps is a torch.float32 tensor on meta"):
        ddpm_loss(tiny_unet(), x, LINEAR, eps=torch.empty(2, 1, 8, 8, device="meta"))
    with pytest.raises(TypeError, match="eps is a torch.float64"):
        flow_loss(tiny_unet(), x, eps=x.double())


def test_images_of_the_wrong_dtype_or_device_are_refused_by_the_unet():
    model, x, t = tiny_unet(), images(2), torch.tensor([1, 2])
    with pytest.raises(TypeError, match=r"float images in \[-1, 1\], got torch.uint8; convert pixels with x.float\(\)"):
        model(((x + 1) * 127.5).to(torch.uint8), t)
    with pytest.raises(TypeError, match="x is torch.float64 but the UNet's weights are torch.float32"):
        model(x.double(), t)
    with pytest.raises(ValueError, match="x is on meta but the UNet is on cpu"):
        model(x.to("meta"), t)


# ------------------------------------------------------------------ checkpoints and weights


@pytest.fixture()
def checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    quick_train(tiny_unet(), images(), LINEAR, path)
    return path


def test_a_truncated_file_names_itself_and_the_fix(checkpoint, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(checkpoint.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="cut.pt: the file is truncated or corrupt.*Delete it"):
        load_checkpoint(cut)
    (tmp_path / "mnist_ddpm.pt").write_bytes((WEIGHTS / "mnist_ddpm.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*export it again"):
        load_pretrained("mnist_ddpm", directory=tmp_path)


def test_pickled_code_is_refused_in_diffedus_words(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this would run",))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="holds pickled Python objects besides tensors, and diffedu never loads "
                                              "those") as info:
        load_checkpoint(tmp_path / "evil.pt")
    assert "weights_only" not in str(info.value)


def test_a_file_of_the_wrong_kind_names_the_loader_that_reads_it(checkpoint):
    with pytest.raises(CheckpointError, match="is not a classifier weights file: it is a diffusion model's weights "
                                              "file; read it with diffedu.pretrained.load_pretrained"):
        load_classifier("mnist", path=WEIGHTS / "mnist_ddpm.pt")
    with pytest.raises(CheckpointError, match="is not a VAE weights file: it is a training checkpoint"):
        load_vae(checkpoint)
    with pytest.raises(CheckpointError, match="is not a training checkpoint: it is a classifier weights file"):
        load_checkpoint(WEIGHTS / "mnist_classifier.pt")


def test_weights_whose_config_does_not_fit_their_tensors(tmp_path):
    payload = torch.load(WEIGHTS / "mnist_ddpm.pt", weights_only=True)
    payload["model_config"]["base_channels"] *= 2
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited.pt does not fit this UNet: shapes differ.*"
                                              r"edited or damaged: export it again"):
        load_pretrained("edited", directory=tmp_path)


def test_a_folder_given_as_a_checkpoint(checkpoint):
    with pytest.raises(CheckpointError, match=r"is a folder; give the path of a training checkpoint inside it "
                                              r"\(there: run.pt\)"):
        load_checkpoint(checkpoint.parent)
    with pytest.raises(CheckpointError, match="the checkpoint path .* is a folder; give a file path"):
        quick_train(tiny_unet(), images(), LINEAR, checkpoint.parent)


# ------------------------------------------------------------------ where a checkpoint cannot be written


def test_an_unwritable_checkpoint_path_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    calls = []
    with pytest.raises(CheckpointError, match="cannot write the checkpoint .*before training"):
        train(tiny_unet(), images(), LINEAR, TrainConfig(steps=3, batch_size=8, preview_every=1),
              checkpoint=blocker / "run.pt", device="cpu", progress=False, callback=calls.append)
    assert calls == []  # not one step was spent


def test_stale_temporary_files_of_interrupted_writes_are_removed(tmp_path):
    stale = [tmp_path / ".run.pt.x1y2z3.tmp", tmp_path / ".run.pt.abcdef.tmp"]
    for f in stale:
        f.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other.pt.abcdef.tmp"
    other.write_bytes(b"another run's")
    quick_train(tiny_unet(), images(), LINEAR, tmp_path / "run.pt")
    assert not any(f.exists() for f in stale) and other.exists()


# ------------------------------------------------------------------ two Ctrl-C in a row


def test_a_second_ctrl_c_during_the_final_save_does_not_lose_the_run(tmp_path, monkeypatch, capsys):
    real_save = train_module.save_checkpoint

    def save_while_pressed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the second press, in the middle of writing
        return real_save(*args, **kwargs)

    def first_press(info):
        if info["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_module, "save_checkpoint", save_while_pressed)
    before, path = signal.getsignal(signal.SIGINT), tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):  # the second press stops the cell, but only once the save is done
        train(tiny_unet(), images(), LINEAR, TrainConfig(steps=50, batch_size=8, preview_every=1, checkpoint_every=1000),
              checkpoint=path, device="cpu", progress=False, callback=first_press)
    assert load_checkpoint(path)["step"] == 3
    out = capsys.readouterr().out
    assert "still saving the checkpoint" in out and "interrupted at step 3: the state is saved to" in out
    assert signal.getsignal(signal.SIGINT) is before


# ------------------------------------------------------------------ the lesson generator


def write_notebook(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return folder


def solution_cell(source: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"solution": True, "grade": False, "locked": False, "grade_id": "x",
                                 "schema_version": 3}
    return cell


@pytest.mark.parametrize("text, message", [
    ("{not json", r"bad.ipynb is not a valid Jupyter notebook .*git checkout -- "),
    (json.dumps({"hello": "world"}), r"bad.ipynb is not a valid Jupyter notebook"),
])
def test_the_generator_names_a_file_that_is_not_a_notebook(tmp_path, capsys, text, message):
    solutions = write_notebook(tmp_path / "solutions", "bad.ipynb", text)
    with pytest.raises(lessons.LessonError, match=message):
        lessons.generate(solutions, tmp_path / "lessons")
    assert lessons.main(["--solutions", str(solutions), "--lessons", str(tmp_path / "lessons")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


@pytest.mark.parametrize("source", ["x = 1\n### END SOLUTION", "### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n### END SOLUTION"])
def test_an_end_marker_without_begin_names_the_notebook_and_cell(tmp_path, source):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("intro"), solution_cell(source)])
    with pytest.raises(lessons.LessonError, match=r"lesson.ipynb, cell 1: '### END SOLUTION' without '### BEGIN"):
        lessons.make_lesson(nb, "lesson.ipynb")


def test_a_stray_end_marker_in_an_ordinary_cell_is_not_copied(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("y = 2\n### END HIDDEN TESTS")])
    with pytest.raises(lessons.LessonError, match="cell 0: '### END HIDDEN TESTS' without '### BEGIN HIDDEN TESTS'"):
        lessons.make_lesson(nb, "lesson.ipynb")


# ------------------------------------------------------------------ text prompts


@pytest.fixture(scope="module")
def text_model():
    tokenizer_words = ["a", "seven", "thick"]
    torch.manual_seed(0)
    return Text2Img(mnist_pixel_text(tokenizer_words, dim=16, depth=1))


@pytest.mark.parametrize("prompts, message", [
    (7, "prompts must be a string or a list of strings, got int 7"),
    (["a seven", None], "prompt 1 is NoneType None, not a string"),
    (("a seven", 3.5), "prompt 1 is float 3.5"),
])
def test_prompts_that_are_not_text_are_refused(text_model, prompts, message):
    with pytest.raises(TypeError, match=message):
        generate(text_model, LINEAR, prompts, steps=2)
    with pytest.raises(TypeError, match=message):
        text_model.encode(prompts)


def test_the_unknown_word_note_lists_the_words_that_matter():
    tokenizer = Tokenizer(["0", "1", "a", "an", "and", "thick", "thin", "seven", "slanted"])
    with pytest.warns(UserWarning, match=r"The words it knows: 0, 1, thick, thin, seven, slanted \(and a, the, of"):
        tokenizer.encode("a purple seven")


# ------------------------------------------------------------------ exercise checks


def test_a_function_that_changes_its_inputs_in_place_is_told_so():
    def in_place(x0, t, eps, schedule):
        abar = schedule.alphas_cumprod[t].reshape(-1, *[1] * (x0.ndim - 1))
        x0.mul_(abar.sqrt())  # the caller's x0 is now scaled
        return x0 + (1 - abar).sqrt() * eps

    with pytest.raises(ExerciseError, match=r"(?s)q_sample changed its input x0 in place.*compute a new tensor instead"):
        lesson01.check_q_sample(in_place)


def test_any_iterable_of_strings_is_a_list_of_prompts():
    from diffedu.models.text import check_prompts

    assert check_prompts(p for p in ("a seven", "a thin one")) == ["a seven", "a thin one"]
    assert check_prompts(np.array(["a seven"])) == ["a seven"] and type(check_prompts(np.array(["x"]))[0]) is str
    with pytest.raises(TypeError, match="prompts must be a string or a list of strings, got bytes"):
        check_prompts(b"a seven")


def test_files_from_before_the_images_flag_are_guessed_from_their_config(tmp_path):
    from diffedu.provenance import guess_images

    assert guess_images({"in_channels": 1}) and guess_images({"in_channels": 3}, {"dataset": "cifar10"})
    assert not guess_images({"in_channels": 4})  # latents
    assert not guess_images({"in_channels": 1}, {"vae": "mnist_vae"})
    payload = torch.load(WEIGHTS / "mnist_ddpm.pt", weights_only=True)
    payload.pop("images", None)  # as written before the flag existed
    torch.save(payload, tmp_path / "old.pt")
    assert provenance_of(load_pretrained("old", "cpu", directory=tmp_path)[0]).images
