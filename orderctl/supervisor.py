"""``orderctl up``: every process as its own OS process, restarted if it dies, stopped on Ctrl-C."""

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field

from orderctl.config import SERVICES, STRIPE_WEBHOOK_EVENTS, CtlSettings
from plumbing.backoff import PROCESS_RESTART

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0


@dataclass
class Supervisor:
    children: list[Child]
    log_dir: str | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False

    async def start(self) -> None:
        for child in self.children:
            await self._spawn(child)
            self._tasks.append(asyncio.create_task(self._watch(child)))

    async def _spawn(self, child: Child) -> None:
        out = None
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            out = open(os.path.join(self.log_dir, f"{child.name}.log"), "ab")  # noqa: ASYNC230 - opened once per spawn
        child.process = await asyncio.create_subprocess_exec(
            *child.argv, env=child.env, stdout=out, stderr=out, start_new_session=True
        )
        if out is not None:
            out.close()

    async def _watch(self, child: Child) -> None:
        failures = 0
        while not self._stopping:
            assert child.process is not None
            started = time.monotonic()
            code = await child.process.wait()
            if self._stopping:
                return
            child.restarts += 1
            # Back off on a crash loop; a process that ran a while restarts at once.
            failures = failures + 1 if time.monotonic() - started < 10 else 0
            delay = PROCESS_RESTART.delay(failures + 1)
            print(f"{child.name} exited with {code}; restarting in {delay:.1f}s", file=sys.stderr)
            await asyncio.sleep(delay)
            await self._spawn(child)

    def by_name(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    async def stop(self, timeout: float = 25.0) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        running = [c.process for c in self.children if c.process and c.process.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(p.wait() for p in running))
        except TimeoutError:
            for proc in running:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()


def service_env(
    settings: CtlSettings, service: str, extra: dict[str, str] | None = None, *, dev_servers: bool = True
) -> dict[str, str]:
    """The environment a process gets: the same names its Kubernetes Deployment sets. With the dev servers,
    payment and notify are pointed at the local Stripe server, SMTP sink and SMS server."""
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": settings.database_url(service),
            "AMQP_URL": settings.amqp_url,
            "HTTP_PORT": str(settings.http_port(service)),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if service == "orchestrator":
        env["API_PORT"] = str(settings.orchestrator_api_port)
    if dev_servers and service == "payment":
        env["STRIPE_API_BASE"] = f"http://127.0.0.1:{settings.stripe_port}"
        env["STRIPE_WEBHOOK_SECRET"] = settings.stripe_webhook_secret
    if dev_servers and service == "notify":
        env.update(
            {
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(settings.smtp_port),
                "SMS_PROVIDER": "twilio",
                "TWILIO_BASE_URL": f"http://127.0.0.1:{settings.sms_port}",
                "TWILIO_ACCOUNT_SID": "ACorderflowlocal",
                "TWILIO_AUTH_TOKEN": "orderflow-local-token",
            }
        )
    env.update(extra or {})
    return env


def stripe_server_env(settings: CtlSettings) -> dict[str, str]:
    """The local Stripe server signs its webhooks for the payment process's endpoint."""
    return {
        **os.environ,
        "STRIPE_SIM_WEBHOOK_URL": f"http://127.0.0.1:{settings.http_port('payment')}/webhooks/stripe",
        "STRIPE_SIM_WEBHOOK_SECRET": settings.stripe_webhook_secret,
        # What a production endpoint enables in Stripe's dashboard (docs/operations.md): only the events payment
        # acts on, so a payment costs one webhook request instead of three (created, charge, succeeded).
        "STRIPE_SIM_WEBHOOK_EVENTS": ",".join(STRIPE_WEBHOOK_EVENTS),
    }


def children(
    settings: CtlSettings, *, dev_servers: bool, extra_env: dict[str, dict[str, str]] | None = None
) -> list[Child]:
    extra_env = extra_env or {}
    result: list[Child] = []
    if dev_servers:
        result.append(
            Child(
                "stripe-server",
                [sys.executable, "-m", "devservers.stripe_server", "--port", str(settings.stripe_port)],
                stripe_server_env(settings),
            )
        )
        result.append(
            Child(
                "smtp-sink",
                [
                    sys.executable,
                    "-m",
                    "devservers.smtp_sink",
                    "--port",
                    str(settings.smtp_port),
                    "--maildir",
                    str(settings.maildir),
                ],
                dict(os.environ),
            )
        )
        result.append(
            Child(
                "sms-server",
                [sys.executable, "-m", "devservers.sms_server", "--port", str(settings.sms_port)],
                dict(os.environ),
            )
        )
    for spec in SERVICES:
        result.append(
            Child(
                spec.name,
                [sys.executable, "-m", spec.module],
                service_env(settings, spec.name, extra_env.get(spec.name), dev_servers=dev_servers),
            )
        )
    return result
