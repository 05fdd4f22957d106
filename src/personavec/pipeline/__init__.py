"""The extraction pipeline and its evaluations: run directories, extract, evaluate (sweeps), calibrate."""
