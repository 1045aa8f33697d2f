"""One trainer for every model (AdamW, warm-up, clipping, EMA, accumulation, AMP, checkpoints, DDP)."""
