"""Entry point of the hub plugin."""
