"""Entry point of the schedulers plugin: registers through the difflux hooks."""
