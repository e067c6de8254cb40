"""Signed, retried webhook delivery.

Signing matches Stripe byte for byte: ``Stripe-Signature: t=<unix>,v1=<hex>``
where ``v1`` is HMAC-SHA256 over ``"<t>.<raw body>"`` keyed with the full
endpoint secret (``whsec_...``), so ``stripe.Webhook.construct_event`` accepts
it.  Like Stripe, each event is delivered independently (no ordering
guarantee), re-signed on every attempt, and retried with backoff when the
receiver answers non-2xx or cannot be reached – just over seconds instead of
days, so tests can watch retries happen.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from .store import new_id

log = logging.getLogger("devservers.stripe_server.webhooks")
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """Build the ``Stripe-Signature`` header value for ``payload``."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


@dataclass
class Endpoint:
    """A webhook destination; ``enabled_events`` may contain ``"*"``."""

    url: str
    secret: str = field(default_factory=lambda: "whsec_" + secrets.token_hex(24))
    enabled_events: list[str] = field(default_factory=lambda: ["*"])
    id: str = field(default_factory=lambda: new_id("we"))

    def wants(self, event_type: str) -> bool:
        """Whether this endpoint subscribes to ``event_type``."""
        return "*" in self.enabled_events or event_type in self.enabled_events


@dataclass
class Delivery:
    """Progress of one event to one endpoint, exposed via ``/_test/state``."""

    event_id: str
    event_type: str
    endpoint_id: str
    url: str
    status: str = "pending"  # pending | delivered | failed
    attempts: int = 0
    last_response_status: int | None = None
    last_error: str | None = None


class WebhookDispatcher:
    """Owns endpoints, the HTTP session and the background delivery tasks."""

    def __init__(self, retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS, timeout: float = 10.0) -> None:
        self.endpoints: list[Endpoint] = []
        self.deliveries: list[Delivery] = []
        self.retry_delays = tuple(retry_delays)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def add_endpoint(self, url: str, secret: str | None = None, enabled_events: list[str] | None = None) -> Endpoint:
        """Register a destination (start-up options or ``/_test/webhook_endpoints``)."""
        endpoint = Endpoint(url=url, enabled_events=enabled_events or ["*"])
        if secret:
            endpoint.secret = secret
        self.endpoints.append(endpoint)
        return endpoint

    def remove_endpoint(self, endpoint_id: str | None = None) -> int:
        """Remove one endpoint by id, or all of them; returns how many went."""
        before = len(self.endpoints)
        self.endpoints = [e for e in self.endpoints if endpoint_id is not None and e.id != endpoint_id]
        return before - len(self.endpoints)

    def deliveries_json(self) -> list[dict[str, Any]]:
        """Delivery records as JSON-able dicts."""
        return [asdict(d) for d in self.deliveries]

    def enqueue(self, event: dict[str, Any]) -> None:
        """Schedule delivery to every subscribed endpoint; never blocks the API call."""
        targets = [e for e in self.endpoints if e.wants(event["type"])]
        event["pending_webhooks"] = len(targets)
        if not targets:
            return
        payload = json.dumps(event)  # compact: see app._dumps; signed as sent, so the layout is free
        for endpoint in targets:
            delivery = Delivery(event["id"], event["type"], endpoint.id, endpoint.url)
            self.deliveries.append(delivery)
            task = asyncio.get_running_loop().create_task(self._deliver(endpoint, payload, delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, endpoint: Endpoint, payload: str, delivery: Delivery) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        for attempt, delay in enumerate((0.0, *self.retry_delays)):
            if delay:
                await asyncio.sleep(delay)
            delivery.attempts = attempt + 1
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                "Stripe-Signature": sign(payload, endpoint.secret),
            }
            try:
                async with self._session.post(endpoint.url, data=payload.encode(), headers=headers) as resp:
                    delivery.last_response_status = resp.status
                    delivery.last_error = None
                    if 200 <= resp.status < 300:
                        delivery.status = "delivered"
                        log.info(
                            "webhook %s %s -> %s (attempt %d)",
                            delivery.event_type,
                            endpoint.url,
                            resp.status,
                            delivery.attempts,
                        )
                        return
            except (TimeoutError, aiohttp.ClientError) as exc:
                delivery.last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "webhook %s %s failed (attempt %d): %s",
                delivery.event_type,
                endpoint.url,
                delivery.attempts,
                delivery.last_error or delivery.last_response_status,
            )
        delivery.status = "failed"

    async def close(self) -> None:
        """Cancel outstanding deliveries and close the HTTP session."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
