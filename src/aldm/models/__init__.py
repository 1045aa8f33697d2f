"""Networks: the 3D VAE, the conditional latent U-Net, its ControlNet and shared blocks."""
