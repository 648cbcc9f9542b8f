"""Origins: where the bytes really live."""
