"""difflux-hub: the Hugging Face Hub for difflux."""
