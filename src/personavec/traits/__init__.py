"""Trait specifications: what a persona vector is extracted from and evaluated with."""

from personavec.traits.spec import TraitSpec, builtin_names, load_trait, validate_trait_file

__all__ = ["TraitSpec", "builtin_names", "load_trait", "validate_trait_file"]
