-- A cancelled CONFIRMED order's sold stock goes back on the shelf (RestockOrder, the cancellation workflow):
-- its reservation turns 'restocked'. The stock ledger's invariant (0002) still holds: restock (one tx) has
-- S' = S + n and H' = H - n (a committed or active line leaves H), R' = R; the UPDATE sets only stock, so the
-- catalog trigger does not fire.
ALTER TABLE reservation DROP CONSTRAINT reservation_status_check;
ALTER TABLE reservation ADD CONSTRAINT reservation_status_check
    CHECK (status IN ('active', 'released', 'committed', 'restocked'));
