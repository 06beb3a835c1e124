"""Entry point of the pipelines-unconditional plugin."""
