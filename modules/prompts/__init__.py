"""A1111 prompt syntax: parsing and 75-token chunks."""
