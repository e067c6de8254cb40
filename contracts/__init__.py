"""Typed message contracts: one module per domain, camelCase on the wire as the reference guide spells it."""
