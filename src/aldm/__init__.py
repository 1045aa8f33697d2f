"""aldm: few-shot cross-domain 3D glioma MRI synthesis (Anatomically-conditioned Latent Diffusion Model)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aldm")  # the one definition: pyproject.toml's, through the installed metadata
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
