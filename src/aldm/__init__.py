"""aldm: few-shot cross-domain 3D glioma MRI synthesis (Anatomically-conditioned Latent Diffusion Model)."""

__version__ = "0.1.0"
