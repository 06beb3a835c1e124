"""Entry point of the attention-sdpa plugin: registers through the difflux hooks."""
