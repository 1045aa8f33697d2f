"""Datasets: embedded phantom cohorts, real-dataset readers, preprocessing, cache, control signals, splits."""
