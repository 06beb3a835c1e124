"""difflux plugin schedulers."""
