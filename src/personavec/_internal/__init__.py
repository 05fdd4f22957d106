"""Private helpers: atomic files, the process group, the OpenAI-compatible client."""
