"""Fault injection (plumbing/faults.py): a command matching a rule of the process's ``FAULTS`` is answered
with the rule's error instead of being handled, in its transaction; ``NoReply`` handles nothing and answers
nothing, so the requester's timeout fires. Installed only when ``FAULTS`` lists a rule: a process without
faults does not ask."""

import logging
from collections.abc import Awaitable

from plumbing.errors import NamedError
from plumbing.faults import NO_REPLY, FaultPlan, FaultRule
from plumbing.middleware.base import Middleware
from plumbing.middleware.delivery import Delivery
from plumbing.middleware.replies import fail

log = logging.getLogger(__name__)


class InjectFaults(Middleware[Delivery]):
    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan

    def before(self, delivery: Delivery) -> Awaitable[None] | None:
        if not delivery.route.needs_reply:
            return None
        fault = self.plan.match(delivery.envelope)
        return None if fault is None else self._inject(delivery, fault)

    @staticmethod
    async def _inject(delivery: Delivery, fault: FaultRule) -> None:
        log.warning("injected fault", extra={"fields": {"error": fault.error}})
        if fault.error != NO_REPLY:  # NoReply: handled as lost, the requester's timeout decides
            await fail(delivery.context, error=NamedError(fault.cause, name=fault.error))
        delivery.stopped = True
