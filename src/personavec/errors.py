"""Mistakes a user can fix: `PersonavecError` and its kinds, for callers that tell them apart.

The CLI prints any of them as one line and exits with code 2. Where none of the kinds fits (a missing
optional dependency, an extraction whose filter kept too few answers), the base class is raised.
"""

from collections.abc import Mapping


class PersonavecError(Exception):
    """A problem the user can fix: the CLI prints it as one line and exits with code 2.

    The message names arguments and config fields as Python spells them; `fields` lists those it
    names, which the CLI writes as its flags (``max_length`` → ``--max-length``), or maps each to the
    command-line field it stands for (an engine's ``model`` is ``--engine-model``)."""

    def __init__(self, message: str = "", fields: tuple[str, ...] | Mapping[str, str] = ()):
        super().__init__(message)
        self.fields = fields


class ConfigError(PersonavecError, ValueError):
    """Settings, flags or arguments that cannot work together (fix the call or the command line)."""


class DataError(PersonavecError, ValueError):
    """A bad input file or row: a dataset, trait file, question file or vector file."""


class ModelError(PersonavecError, ValueError):
    """A model that cannot be loaded or used, or a vector or layer that does not fit it."""


class RunDirError(PersonavecError):
    """A run directory that is not this run's (other settings, another kind, a foreign or older one)."""


class JudgeError(PersonavecError, RuntimeError):
    """A judge, or another OpenAI-compatible endpoint, that fails."""


class EngineError(PersonavecError, RuntimeError):
    """An engine that generates answers (``--engine``) which fails, or does not see the local prompts."""
