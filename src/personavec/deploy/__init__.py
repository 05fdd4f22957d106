"""Using vectors on a deployed model: projections and the live monitor, guarded steering, capability."""
