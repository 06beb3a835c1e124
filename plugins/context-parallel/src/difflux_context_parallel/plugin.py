"""Entry point of the context-parallel plugin: it registers nothing (it is a library used by name), so
``difflux plugins`` lists it and its distribution; importing it imports no torch."""
