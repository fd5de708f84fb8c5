"""plait.profiling."""
