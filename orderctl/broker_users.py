"""``orderctl broker-users``: one RabbitMQ user per process, with the permissions contracts.permissions gives it.

Through RabbitMQ's management HTTP API (the rabbitmq_management plugin), which reaches a remote broker as well
as the local one, logged in as the user of ORDERFLOW_AMQP_URL (an administrator). Each process's password comes
from ORDERFLOW_<PROCESS>_AMQP_PASSWORD (on Kubernetes: the same value as its Secret). Running it again updates
passwords and permissions to the table's; ``--delete`` removes the users.
"""

import argparse
import base64
import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp

from contracts import permissions
from contracts.permissions import Access
from orderctl.config import CtlSettings
from orderctl.errors import CtlError, Unreachable, UsageError

API_VARIABLE = "ORDERFLOW_RABBITMQ_API_URL"
PREFIX_VARIABLE = "ORDERFLOW_BROKER_USER_PREFIX"


class ManagementApiError(CtlError):
    """The management API refused a request (not an administrator, a bad vhost, ...)."""


def password_variable(process: str) -> str:
    return f"ORDERFLOW_{process.upper()}_AMQP_PASSWORD"


@dataclass(frozen=True)
class Target:
    """The broker to change: its management API, the administrator's credentials and the vhost."""

    api_url: str
    admin: tuple[str, str]
    vhost: str

    @classmethod
    def of(cls, amqp_url: str, api_url: str | None = None) -> "Target":
        parts = urlsplit(amqp_url)
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        api = api_url or f"http://{parts.hostname or '127.0.0.1'}:15672"
        return cls(api.rstrip("/"), (unquote(parts.username or "guest"), unquote(parts.password or "guest")), vhost)


class ManagementApi:
    """The few calls of RabbitMQ's HTTP API this command needs."""

    def __init__(self, target: Target, session: aiohttp.ClientSession) -> None:
        self.target = target
        self.session = session
        user, password = target.admin
        self._auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.target.api_url}/api/{path}"
        try:
            async with self.session.request(method, url, json=body, headers=self._auth) as response:
                text = await response.text()
                if response.status == 404 and method == "DELETE":
                    return None
                if response.status >= 300:
                    raise ManagementApiError(f"{method} {url}: HTTP {response.status} {text[:300]}")
                return json.loads(text) if text else None
        except aiohttp.ClientConnectionError as exc:
            raise Unreachable(
                f"RabbitMQ's management API at {self.target.api_url} ({API_VARIABLE}): {exc}; "
                "is the rabbitmq_management plugin enabled?"
            ) from exc

    async def put_user(self, name: str, password: str) -> None:
        # No tags: the processes need no management access.
        await self.call("PUT", f"users/{quote(name, safe='')}", {"password": password, "tags": ""})

    async def grant(self, name: str, access: Access) -> None:
        vhost, user = quote(self.target.vhost, safe=""), quote(name, safe="")
        g = access.grant
        await self.call(
            "PUT", f"permissions/{vhost}/{user}", {"configure": g.configure, "write": g.write, "read": g.read}
        )
        for topic in access.topics:
            await self.call(
                "PUT",
                f"topic-permissions/{vhost}/{user}",
                {"exchange": topic.exchange, "write": topic.write, "read": topic.read},
            )

    async def delete_user(self, name: str) -> None:
        await self.call("DELETE", f"users/{quote(name, safe='')}")


def passwords(env: dict[str, str] | None = None) -> dict[str, str]:
    """Each process's password from ORDERFLOW_<PROCESS>_AMQP_PASSWORD; a missing one is a usage error."""
    env = os.environ if env is None else env
    missing = [password_variable(p) for p in permissions.PROCESSES if not env.get(password_variable(p))]
    if missing:
        raise UsageError(f"set {', '.join(missing)} (each process's RabbitMQ password)")
    return {p: env[password_variable(p)] for p in permissions.PROCESSES}


async def create_users(target: Target, secrets: dict[str, str], *, prefix: str = permissions.USER_PREFIX) -> list[str]:
    """Create or update every process's user and permissions on the target's vhost; returns the user names."""
    names = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        api = ManagementApi(target, session)
        for process, access in permissions.table().items():
            name = permissions.user_name(process, prefix)
            await api.put_user(name, secrets[process])
            await api.grant(name, access)
            names.append(name)
    return names


async def delete_users(target: Target, *, prefix: str = permissions.USER_PREFIX) -> list[str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        api = ManagementApi(target, session)
        names = [permissions.user_name(p, prefix) for p in permissions.PROCESSES]
        for name in names:
            await api.delete_user(name)
    return names


async def cmd_broker_users(settings: CtlSettings, args: argparse.Namespace) -> int:
    target = Target.of(settings.amqp_url, os.environ.get(API_VARIABLE))
    prefix = args.prefix or os.environ.get(PREFIX_VARIABLE) or permissions.USER_PREFIX
    if args.delete:
        names = await delete_users(target, prefix=prefix)
        print(f"deleted: {', '.join(names)}")
        return 0
    names = await create_users(target, passwords(), prefix=prefix)
    print(f"vhost {target.vhost}: {', '.join(names)} (permissions from contracts/permissions.py)")
    return 0


def register(sub: argparse._SubParsersAction, command: Any) -> None:
    """Add ``broker-users`` to orderctl's parser (``command`` is main.parser's helper)."""
    b = command(sub, "broker-users", "create one RabbitMQ user per process with only the permissions it needs")
    b.add_argument("--prefix", help=f"user names are PREFIX<process> (default: {permissions.USER_PREFIX})")
    b.add_argument("--delete", action="store_true", help="delete the users instead")
    b.set_defaults(run=cmd_broker_users)
