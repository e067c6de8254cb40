CREATE TABLE product (
    product_id text PRIMARY KEY,
    name       text NOT NULL,
    price      numeric(12, 2) NOT NULL CHECK (price >= 0),
    currency   text NOT NULL DEFAULT 'usd',
    stock      integer NOT NULL CHECK (stock >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One reservation per order (idempotency_id is the orderId), all lines or none.
CREATE TABLE reservation (
    reservation_id text PRIMARY KEY,
    order_id       text NOT NULL,
    idempotency_id text NOT NULL UNIQUE,
    status         text NOT NULL CHECK (status IN ('active', 'released', 'committed')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservation_order ON reservation (order_id);
CREATE INDEX reservation_active_age ON reservation (created_at) WHERE status = 'active';

CREATE TABLE reservation_line (
    reservation_id text NOT NULL REFERENCES reservation (reservation_id),
    product_id     text NOT NULL REFERENCES product (product_id),
    quantity       integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, product_id)
);

-- Results of idempotent operations ({orderId}-release), kept 7 days as the guide's cache.
CREATE TABLE idempotency_record (
    idempotency_id text PRIMARY KEY,
    operation      text NOT NULL,
    result         jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_record_age ON idempotency_record (created_at);
