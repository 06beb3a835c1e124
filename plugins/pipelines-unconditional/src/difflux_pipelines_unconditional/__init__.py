"""difflux plugin: unconditional and class-conditional pipelines."""
