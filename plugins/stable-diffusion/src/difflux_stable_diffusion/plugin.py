"""Entry point of the stable-diffusion plugin."""
