"""Metrics of synthetic volumes (§4.3 and what the field now expects): SSIM (2D paired, 3D), MS-SSIM
diversity, memorisation, FRD (radiomics), FID (Inception, per patient and pooled), Fréchet distance, and
the mask-swap check. They need no training; the learned evaluators are in :mod:`aldm.evaluators`."""
