"""difflux plugin attention-sdpa."""
