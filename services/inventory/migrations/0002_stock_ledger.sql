-- The stock put in, so the invariant checker (orderctl check) can prove that no unit was lost or
-- doubled: for every product, at every committed state,
--
--     stock + (quantities of its active and committed reservation lines) = received
--
-- `received` is the net stock operators put in: the first stock of a product, plus every later
-- correction of its catalog entry (`orderctl stock set`, repository.upsert_product), each counted
-- as the difference it makes. Reservation moves never change it.
--
-- Telling the two kinds of stock change apart needs the statement's intent, not its data: a trigger
-- that explained every stock change by the reservation rows written beside it would make the
-- invariant true by construction and blind to the bugs it is for (a double take, a lost or double
-- release). The intent is in the statement's SET list, which an `UPDATE OF` trigger sees:
--
--   * upsert_product's ON CONFLICT DO UPDATE sets name, price and currency with the stock: a catalog
--     edit. `product_stock_set` fires and adds NEW.stock - OLD.stock to received.
--   * take_stock (stock - n, with a new active line of n) and release_reservation (stock + n, with
--     its reservation turning released) set only stock and updated_at: the trigger does not fire.
--   * commit_reservations changes a reservation's status from active to committed: no stock moves.
--
-- Proof, writing S for stock, H for the active and committed line quantities, R for received:
--   INSERT                  S = s, H = 0 (no line can name a new product), R := s           S + H = R
--   catalog edit            S' = N, H' = H, R' = R + N - S                                  S' + H' = N + H = R'
--   reserve (one tx)        S' = S - n, H' = H + n, R' = R                                  S' + H' = R'
--   release (one tx)        S' = S + n, H' = H - n, R' = R                                  S' + H' = R'
--   commit                  S' = S, H' = H, R' = R
-- The product row lock, taken by every one of these UPDATEs, serializes them, so OLD is the row
-- as the last committed change left it. A stock change by any other statement (a future
-- `SET stock = stock + n` that names no catalog column) is not counted in received and the
-- checker reports it: the design fails loudly, never silently.
--
-- Existing rows start from what they hold now (their stock and reservations are assumed consistent).

ALTER TABLE product ADD COLUMN received integer NOT NULL DEFAULT 0;

UPDATE product p SET received = p.stock + coalesce((
    SELECT sum(l.quantity)
    FROM reservation_line l JOIN reservation r ON r.reservation_id = l.reservation_id
    WHERE l.product_id = p.product_id AND r.status IN ('active', 'committed')
), 0);

CREATE FUNCTION product_stock_received() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.received := NEW.stock;
    ELSE
        NEW.received := OLD.received + NEW.stock - OLD.stock;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER product_stock_insert BEFORE INSERT ON product
    FOR EACH ROW EXECUTE FUNCTION product_stock_received();

CREATE TRIGGER product_stock_set BEFORE UPDATE OF name, price, currency ON product
    FOR EACH ROW EXECUTE FUNCTION product_stock_received();
