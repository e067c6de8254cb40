"""Inventory's errors, named as the reference guide names them."""

from plumbing.errors import BusinessError


class InsufficientStockError(BusinessError):
    error_name = "InsufficientStockError"


class InventoryError(BusinessError):
    error_name = "InventoryError"
