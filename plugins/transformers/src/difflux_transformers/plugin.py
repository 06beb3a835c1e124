"""Entry point of the transformers plugin."""
