"""Latent diffusion: noise schedule, loss (Eq. 3.5, 3.9), classifier-free guidance (Eq. 3.8), samplers."""
