"""Token positions: which tokens of a sequence an intervention edits (torch-free, so configs name them).

- ``"all"``: every non-pad token;
- ``"prompt"``: the tokens of the first forward pass over a sequence (the prompt, in ``generate``);
- ``"response"``: the tokens after it (the generated ones).

Not to be confused with the poolings of `personavec.core.activations` (prompt-last, prompt-avg,
response-avg), which say how a sequence's activations are averaged; see `personavec.core.hooks`.
"""

from __future__ import annotations

from typing import Literal, get_args

TokenPositions = Literal["all", "prompt", "response"]
TOKEN_POSITIONS: tuple[TokenPositions, ...] = get_args(TokenPositions)
