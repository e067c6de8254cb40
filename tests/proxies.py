"""A private stack whose payment and notify reach the Stripe server, SMTP sink and SMS server through fault
proxies (devservers/fault_proxy.py), for the tests of answers lost, delayed or refused on the wire.

The proxies run in the test's event loop: a test holding the loop (a blocking ``http_json``, ``time.sleep``)
also holds every byte between payment or notify and their servers, so call blocking helpers through
``asyncio.to_thread``. Usage::

    async with proxied_stack(tmp_path, workflow_file=str(short)) as proxied:
        proxied.stripe.add(Fault("drop_answer", times=None, match=b"POST /v1/payment_intents "))
        ...  # publish an order on proxied.stack, then assert on proxied.stripe.stats and the provider's state
"""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from faults_support import consuming, print_logs
from harness import (
    Stack,
    create_api_token,
    create_databases,
    drop_databases,
    eventually,
    settings_for,
    short_timeout_workflow,
    stack_children,
    wait_ready,
)

from devservers.fault_proxy import FaultProxy
from orderctl.sandbox import create_vhost, delete_vhost
from orderctl.supervisor import Supervisor

#: What payment and notify send where (the request bytes a ``Fault.match`` can name).
CREATE_PAYMENT_INTENT = b"POST /v1/payment_intents "
REFUND = b"POST /v1/refunds "
SMTP_END_OF_DATA = b"\r\n.\r\n"
SEND_SMS = b"POST /2010-04-01/"


@dataclass
class ProxiedStack:
    """A running stack and the proxies in front of its three development servers."""

    stack: Stack
    stripe: FaultProxy
    smtp: FaultProxy
    sms: FaultProxy

    @property
    def proxies(self) -> dict[str, FaultProxy]:
        return {"stripe": self.stripe, "smtp": self.smtp, "sms": self.sms}

    @property
    def maildir(self) -> Path:
        """Where the SMTP sink writes what it accepted (``devservers.smtp_sink.messages`` reads it)."""
        return self.stack.settings.maildir

    def clear(self) -> None:
        """Disarm every proxy's faults (answers already held stay held until their delay ends)."""
        for proxy in self.proxies.values():
            proxy.clear()


def _answering(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.asynccontextmanager
async def proxied_stack(
    tmp_path: Path,
    *,
    extra_env: dict[str, dict[str, str]] | None = None,
    workflow_file: str | None = None,
    request: pytest.FixtureRequest | None = None,
) -> AsyncIterator[ProxiedStack]:
    """Every process on a vhost and databases of its own, payment and notify pointed at fault proxies.

    ``workflow_file`` defaults to the session stack's (harness.short_timeout_workflow); ``extra_env`` goes to
    the process it names and wins over the proxies' addresses. Given the fixture's ``request``, a test that
    failed while the stack ran gets the processes' last log lines printed (an error raised inside the block
    prints them too)."""
    amqp_url = await asyncio.to_thread(create_vhost, "orderflow-proxied")
    settings = settings_for(amqp_url, tmp=tmp_path)
    proxies = {
        name: FaultProxy("127.0.0.1", 0, "127.0.0.1", port)
        for name, port in (("stripe", settings.stripe_port), ("smtp", settings.smtp_port), ("sms", settings.sms_port))
    }
    workflow = workflow_file or str(short_timeout_workflow(tmp_path))
    supervisor: Supervisor | None = None
    try:
        await create_databases(settings)
        for proxy in proxies.values():
            await proxy.start()
        env: dict[str, dict[str, str]] = {
            "orchestrator": {"WORKFLOW_FILE": workflow},
            "payment": {"STRIPE_API_BASE": f"http://127.0.0.1:{proxies['stripe'].port}"},
            "notify": {
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(proxies["smtp"].port),
                "TWILIO_BASE_URL": f"http://127.0.0.1:{proxies['sms'].port}",
            },
        }
        for service, values in (extra_env or {}).items():
            env[service] = {**env.get(service, {}), **values}
        supervisor = Supervisor(stack_children(settings, env), log_dir=str(tmp_path / "log"))
        token = await create_api_token(settings, "viewer", "tests")
        stack = Stack(
            settings=settings, supervisor=supervisor, log_dir=tmp_path / "log", workflow_file=workflow, api_token=token
        )
        await supervisor.start()
        await wait_ready(stack)
        await consuming(stack)

        async def servers_answer() -> bool:  # asked directly: a probe through a proxy would count as an exchange
            ports = (settings.stripe_port, settings.smtp_port, settings.sms_port)
            return all(await asyncio.gather(*(asyncio.to_thread(_answering, p) for p in ports)))

        await eventually(servers_answer, timeout=30, what="the Stripe server, SMTP sink and SMS server")
        failed = request.session.testsfailed if request is not None else 0
        try:
            yield ProxiedStack(stack, proxies["stripe"], proxies["smtp"], proxies["sms"])
        except BaseException:
            print_logs(stack)
            raise
        if request is not None and request.session.testsfailed > failed:
            print_logs(stack)
    finally:
        # Proxies first: an answer held for a long delay would otherwise hold its process's drain.
        for proxy in proxies.values():
            await proxy.stop()
        if supervisor is not None:
            await supervisor.stop()
        await drop_databases(settings)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(delete_vhost, amqp_url)
