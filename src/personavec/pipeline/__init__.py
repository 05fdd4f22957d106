"""The method: extract a vector, evaluate it (steering sweeps), calibrate its projection."""
