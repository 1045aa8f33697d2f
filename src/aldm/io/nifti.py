"""NIfTI reading with a bound and writing with the on-disk conventions of the real downloads.

Every volume aldm reads goes through :func:`load_nifti`: the header is checked before any voxel is read
— the declared shape must be 2D-4D with positive sizes, and the float32 copy it would take must stay
under a limit (:data:`MAX_VOLUME_BYTES`, 2 GiB; ``ALDM_MAX_VOLUME_GB`` raises it), and an uncompressed
file must hold the bytes it declares. nibabel then reads exactly the declared bytes, so a gzip bomb
(a small file that inflates to far more) stops at the declared size; any failure is one line naming
the file.
"""

from __future__ import annotations

import os
import zlib

import nibabel as nib
import numpy as np

from ..errors import AldmError
from .atomic import atomic_path, human_bytes

# a BraTS / UPENN-GBM / UCSF-PDGM volume is 240 x 240 x 155 = 8.9 M voxels (36 MB as float32): 2 GiB is ~60x that
MAX_VOLUME_BYTES = 2 * 1024**3


def max_volume_bytes() -> int:
    """The limit on one volume's float32 copy: ``ALDM_MAX_VOLUME_GB`` (GiB) when set, else 2 GiB."""
    text = os.environ.get("ALDM_MAX_VOLUME_GB")
    if not text:
        return MAX_VOLUME_BYTES
    try:
        value = float(text)
    except ValueError:
        raise AldmError(f"ALDM_MAX_VOLUME_GB must be a number of GiB, got {text!r}") from None
    if not value > 0:
        raise AldmError(f"ALDM_MAX_VOLUME_GB must be positive, got {text!r}")
    return int(value * 1024**3)


def check_header(path: str, img) -> tuple[int, ...]:
    """The declared shape of ``img`` (loaded from ``path``, header only) if reading it is safe, else an
    AldmError naming the file: a shape that is not 2D-4D with positive sizes, a float32 copy over
    :func:`max_volume_bytes`, or an uncompressed file shorter than the data it declares."""
    shape = tuple(int(n) for n in img.shape)
    if not 2 <= len(shape) <= 4 or any(n < 1 for n in shape):
        raise AldmError(f"{path}: the header declares a volume of shape {shape}, not a 2D-4D image")
    voxels = int(np.prod(shape, dtype=np.float64))
    limit = max_volume_bytes()
    if voxels * 4 > limit:
        declared = "x".join(map(str, shape))
        raise AldmError(f"{path}: the header declares a {declared} volume ({human_bytes(voxels * 4)} as "
                        f"float32), over the limit of {human_bytes(limit)}; set ALDM_MAX_VOLUME_GB to read it anyway")
    if not path.endswith(".gz"):
        itemsize = np.dtype(img.get_data_dtype()).itemsize
        offset = int(img.header.get("vox_offset", 0)) if hasattr(img.header, "get") else 0
        need = offset + voxels * itemsize
        have = os.path.getsize(path)
        if have < need:
            raise AldmError(f"{path}: truncated: the header declares {human_bytes(need)} of data, the file holds "
                            f"{human_bytes(have)}")
    return shape


def load_nifti(path: str, dtype=np.float32, scaled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(array, affine) of a NIfTI file, read with the bound of :func:`check_header`, through ``get_fdata``
    (``scaled``, what preprocessing uses) or the array proxy (``np.asarray(img.dataobj, dtype)``; both apply
    the header's scl_slope / scl_inter). Every way the file can be damaged (missing, truncated, corrupt
    gzip, not a NIfTI, too large) is one AldmError naming it."""
    try:
        img = nib.load(path)
    except FileNotFoundError:
        raise AldmError(f"{path}: file not found") from None
    except Exception as exc:  # nibabel's ImageFileError, OSError, ValueError, struct errors of a bad header
        raise AldmError(f"{path}: unreadable NIfTI ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from exc
    check_header(path, img)
    try:
        data = img.get_fdata(dtype=dtype) if scaled else np.asarray(img.dataobj, dtype=dtype)
    except MemoryError:
        raise AldmError(f"{path}: not enough memory to read its {img.shape} volume") from None
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise AldmError(f"{path}: unreadable NIfTI data ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") \
            from exc
    return np.asarray(data), np.asarray(img.affine, dtype=np.float64)


def save_nifti(path: str, array: np.ndarray, affine: np.ndarray, dtype=np.float32) -> None:
    """Write ``array`` (X, Y, Z) with ``affine`` (voxel -> world mm, RAS+ NIfTI convention) atomically.

    ``dtype`` is the on-disk type. Float data stored as ``np.int16`` gets a ``scl_slope``
    (nibabel chooses it), as UCSF-PDGM ships its images; integer data is stored as is.
    """
    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    image.set_data_dtype(dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
