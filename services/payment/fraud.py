"""The fraud screen (``payment.ScreenOrder``): an order checked against rules that are data, before anything is
taken.

The rules are settings (FRAUD_AMOUNT_CEILING, FRAUD_MAX_UNITS, FRAUD_BLOCKED_EMAIL_DOMAINS), the decision is a
pure function of them and the order, and it is kept per idempotency key (table ``fraud_screening``): asked again
(a retry, a redelivery, a reconcile), an order gets the answer it got the first time, even if the rules changed
in between. A refusal is the business error ``FraudCheck.Rejected``, replied with the decision committed (not
rolled back), so a definition's Catch routes it and the record shows why.
"""

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from contracts.payment import OrderScreened, ScreenOrder
from plumbing.commands import fail
from plumbing.consumer import MessageContext
from plumbing.errors import BusinessError
from services.payment.money import to_minor

#: The rules by name, in the order they are checked; the reply lists them.
RULES = ("amount_ceiling", "max_units", "blocked_email_domain")


class FraudRejected(BusinessError):
    error_name = "FraudCheck.Rejected"


class FraudRules(BaseModel):
    """What the screen refuses. Every limit is inclusive: an order at the ceiling passes."""

    model_config = ConfigDict(frozen=True)

    amount_ceiling: Decimal = Field(
        Decimal("10000"), gt=0, description="Orders above this amount (major units of the order's currency)."
    )
    max_units: int = Field(50, ge=1, description="Orders of more units than this, over all lines.")
    blocked_email_domains: tuple[str, ...] = Field(
        (), description="Customers whose email is at one of these domains or below one (lower case)."
    )


def reasons(rules: FraudRules, order: ScreenOrder) -> list[str]:
    """Why ``order`` is refused under ``rules``; empty when it passes. Pure: no I/O, no clock, no randomness."""
    found = []
    if order.amount > rules.amount_ceiling:
        found.append(f"amount_ceiling: {order.amount} {order.currency} is above {rules.amount_ceiling}")
    units = sum(line.quantity for line in order.lines)
    if units > rules.max_units:
        found.append(f"max_units: {units} units is above {rules.max_units}")
    domain = order.customer.email.rsplit("@", 1)[-1].lower()
    for blocked in rules.blocked_email_domains:
        if domain == blocked or domain.endswith("." + blocked):
            found.append(f"blocked_email_domain: {domain} is blocked ({blocked})")
            break
    return found


async def screen_order(ctx: MessageContext, command: ScreenOrder, *, rules: FraudRules) -> OrderScreened | None:
    """Decide once per idempotency key; a decision already taken is answered as it was."""
    # One order's screenings one at a time (the payment service's per-order lock), so a key is decided once.
    await ctx.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))", command.orderId)
    row = await ctx.conn.fetchrow(
        "SELECT decision, reasons FROM fraud_screening WHERE idempotency_key = $1", command.idempotencyKey
    )
    if row is None:
        found = reasons(rules, command)
        decision = "rejected" if found else "approved"
        await ctx.conn.execute(
            """INSERT INTO fraud_screening (idempotency_key, order_id, decision, reasons, amount_minor, currency)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            command.idempotencyKey,
            command.orderId,
            decision,
            found,
            to_minor(command.amount, command.currency),
            command.currency,
        )
    else:
        decision = row["decision"]
        found = list(row["reasons"])
    if decision == "rejected":
        # fail, not raise: the decision stays committed beside the failure reply.
        await fail(ctx, error=FraudRejected("; ".join(found)))
        return None
    return OrderScreened(rules=list(RULES))
