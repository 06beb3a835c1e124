"""difflux plugin: loads transformers components named in model_index.json."""
