"""The engine: models, layers, residual-stream hooks, pooled activations, vectors, generation.

Nothing here knows about traits, judges or run directories.
"""
