"""plait's benchmark suite: ``make bench`` runs ``python -m benchmarks``."""
