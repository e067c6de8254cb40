"""Inventory: the catalog, stock and reservations; answers Check, Reserve and ReleaseInventory."""
