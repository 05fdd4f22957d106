"""personavec: persona vectors for language models (Chen et al. 2025, arXiv 2507.21509)."""

from personavec.activations import Pooled, iter_pooled, pooled_activations
from personavec.errors import PersonavecError
from personavec.guard import Guard
from personavec.hooks import Capture, ablate, capture, steer
from personavec.layers import find_blocks, set_blocks_path
from personavec.models import LoadedModel, ModelIdentity, format_chat, load_model
from personavec.monitor import LiveMonitor, project
from personavec.vectors import KINDS, PersonaVector, load_vector, load_vectors, save_vectors
from personavec.version import __version__

__all__ = [
    "KINDS",
    "Capture",
    "Guard",
    "LiveMonitor",
    "LoadedModel",
    "ModelIdentity",
    "PersonaVector",
    "PersonavecError",
    "Pooled",
    "__version__",
    "ablate",
    "capture",
    "find_blocks",
    "format_chat",
    "iter_pooled",
    "load_model",
    "load_vector",
    "load_vectors",
    "pooled_activations",
    "project",
    "save_vectors",
    "set_blocks_path",
    "steer",
]
