"""The generators of the docs' reference parts, one module per page (`docs/gen_reference.py`)."""
