"""Evaluation (§4.3): FID (per patient and pooled), SSIM (2D paired, 3D), MS-SSIM diversity, memorisation."""
