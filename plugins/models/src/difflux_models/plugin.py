"""Entry point of the models plugin: registers through the difflux hooks."""
