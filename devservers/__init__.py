"""Local stand-ins for third-party services, used by dev setups and tests."""
