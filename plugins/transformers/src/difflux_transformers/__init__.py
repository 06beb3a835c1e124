"""difflux plugin: loads ["transformers", ClassName] components (CLIP, T5, tokenizers, image processors) through the transformers library."""
