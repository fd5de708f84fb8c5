"""``make bench-learning``: optimizers on a real small model, plait and DSPy side by side."""
