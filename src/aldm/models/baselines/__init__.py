"""The comparison models of §4.2: CGAN (Mirza & Osindero 2014), 3M-CGAN (Xin et al. 2020) and a
mask-conditioned VAE-GAN (Larsen et al. 2016)."""
