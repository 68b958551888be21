"""diffedu: the helper library of the course "Diffusion models from scratch".

Two parts. The **library** is what the lessons build, one module per concept, named after the math:

- the math of diffusion: `schedules`, `forward` (q_sample), `predictions` (eps / x0 / v), `losses`,
  `samplers` (DDPM, DDIM), `guidance` (classifier-free guidance), `flow` (flow matching and the
  probability-flow ODE);
- the networks, ordinary `nn.Module`s with a config: `models.layers`, `models.unet`, `models.mlp`,
  `models.vae`, `models.text` (tokenizer and text encoder), `models.classifier` (the FID_self yardstick);
- training: `train` (the loop and `TrainConfig`), `ema`, `checkpoints`, `train_cli` (``python -m
  diffedu.train``), `device_data`, `distributed`, `devices`;
- data, judging and pipelines: `data`, `captions`, `metrics`, `pretrained`, `latent`, `text2img`.

The **course machinery**, in `diffedu.course`, runs the notebooks: `profiles` (`start`), the exercise
`checks` (one module per lesson), `grading`, `lessons` (generates lessons/ from solutions/), `widgets`,
`plotting` and `records` (the benchmarks' recorded figures). The library never imports it.

A reader new to the code starts with `schedules`, `forward`, `losses` and `samplers`, then `models.unet`
and `train`: the same order as the lessons.
"""

from diffedu import _old_paths
from diffedu.course.profiles import Profile, get_profile, start
from diffedu.version import __version__

__all__ = ["Profile", "get_profile", "start", "__version__"]

# Notebooks saved before the networks moved to diffedu.models and the course machinery to diffedu.course
# import them by their old names (`from diffedu.unet import UNet`, `from diffedu import checks`): still found.
_old_paths.install()
