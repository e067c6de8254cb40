"""The invariant checker: reads every service's database and the payment provider, and reports violations.

What the guide promises, as rules over one snapshot: every order ends in exactly
one terminal status, no order is charged twice, money is kept exactly for
CONFIRMED orders, stock is never lost nor doubled, compensations finish, and a
CONFIRMED order has its record and its notification. The payment provider
is read through the Stripe SDK (provider.py): every ended order's PaymentIntents,
found by their metadata orderId, and their refunds. Each rule is a small
function in ``RULES`` with a name and a docstring; ``orderctl check`` runs them.

The databases cannot be read in one snapshot, so the orchestrator's is read
twice, before and after the others. An order is judged by the status it had
in both reads; one that moved in between, or appeared, counts as running. A
saga ends only after its effects are done, so a saga read as ended has every
effect in the later reads; every order with an effect has a saga by the
second read. While orders run (``allow_running``) the rules judge only the
ended ones; at quiescence a running order is itself a violation.
"""

from orderctl.checker.model import CheckError, Report, Snapshot, Violation
from orderctl.checker.provider import ProviderConfig
from orderctl.checker.reading import check, render, snapshot
from orderctl.checker.rules import RULES

__all__ = ["RULES", "CheckError", "ProviderConfig", "Report", "Snapshot", "Violation", "check", "render", "snapshot"]
