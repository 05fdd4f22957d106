"""Understanding a vector: how vectors relate (geometry)."""
