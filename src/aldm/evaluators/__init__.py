"""Learned evaluators: networks trained on real volumes to judge synthetic ones — the 2D tumour / IDH /
grade classifier (TRTR / TRTS / augmentation over patient-grouped CV) and the 3D tumour segmenter (mask
adherence; the downstream segmentation protocols and their leak checks)."""
