"""diffedu: the helper library of the course "Diffusion models from scratch".

One module per concept, named after the math: `schedules`, `forward` (q_sample), `predictions`,
`losses`, `samplers` (DDPM, DDIM), `layers`, `unet`, `mlp`, `train`, `pretrained`, `data`,
`classifier` and `metrics` (FID_self, KID), `checks`, `plotting`, `widgets`, `profiles`, `lessons`.
"""

__version__ = "0.1.0"

from diffedu.profiles import Profile, get_profile, start  # noqa: E402

__all__ = ["Profile", "get_profile", "start", "__version__"]
