"""The conformance checks, one module per kind of check (see ``registry.conformance``)."""
