"""Editing a real scan by its label map (``aldm edit``): the tumour inserted, moved, grown, shrunk, replaced by
another patient's or removed, with the input's own voxels everywhere outside the region of change.

region.py (the region of change and its seam), operations.py (new label maps from the subject's own),
subjects.py (the scan to edit: a cache subject or a case on disk), editor.py (the latent edit: encode, sample
the region under the new label map with the rest known, decode, blend), session.py (the command: variants
written as a sample folder, resumable).
"""
