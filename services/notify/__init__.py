"""Notify: the order confirmation by email (aiosmtplib) and SMS (a pluggable provider)."""
