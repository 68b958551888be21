"""The networks of the course: ordinary `nn.Module`s with a config, knowing nothing about diffusion.

`layers` (time embedding, ResBlock, attention), `unet` (the denoiser and its presets), `dit` (lesson 11's
Diffusion Transformer) and `mmdit` (its joint text-image form), `inputs` (the input checks the denoisers share),
`mlp` (lesson 02's toy denoiser), `vae` (lesson 07's autoencoder), `text` (lesson 09's tokenizer and text
encoder) and `classifier` (the yardstick behind FID_self).
"""
