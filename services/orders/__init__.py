"""Orders: the final order record, created CONFIRMED once per order."""
