"""Developer tools run from a source checkout (`make chart`)."""
