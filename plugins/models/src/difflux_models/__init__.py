"""difflux plugin models."""
