"""Payment: charges and refunds through the official stripe SDK, idempotent by Stripe's idempotency keys."""
