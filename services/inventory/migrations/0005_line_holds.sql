-- Line-by-line holds (ReserveInventoryLine): an order may now hold several reservations, one per line, each keyed
-- by its own idempotency id ({orderId}-reserve-{productId}); 0001's "one reservation per order" holds only for
-- ReserveInventory. No column changes: ReleaseInventory, CommitReservation, RestockOrder and the sweeper act on
-- every reservation of an order, and the stock ledger's invariant (0002) is per reservation line. The lookups a
-- line makes are by idempotency_id (unique, so indexed) and by order_id (reservation_order).
COMMENT ON TABLE reservation IS
    'Stock held for an order: one per order (ReserveInventory, keyed by the orderId) or one per line '
    '(ReserveInventoryLine, keyed {orderId}-reserve-{productId}); released, committed, restocked as the order''s.';
