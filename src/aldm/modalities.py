"""The model's image channels, in order, and the file names they are written under.

A model-space volume is (3, S, S, S): channel 0 T1, 1 T2, 2 FLAIR (the paper's three modalities;
T1c is read by the dataset readers but not modelled). Synthetic and cached samples are written as
``t1.nii.gz``, ``t2.nii.gz``, ``flair.nii.gz`` and ``mask.nii.gz``.
"""

MODALITIES = ("T1", "T2", "FLAIR")
MODALITY_FILES = tuple(m.lower() for m in MODALITIES)  # ("t1", "t2", "flair")
MASK_FILE = "mask"
VOLUME_FILES = (*MODALITY_FILES, MASK_FILE)  # every volume a sample has
