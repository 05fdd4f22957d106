"""Using vectors on a deployed model: projections and the live monitor, guarded steering, capability
(multiple choice, and the held-out loss on ordinary text)."""
