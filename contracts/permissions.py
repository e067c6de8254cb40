"""Who may do what on the broker: one RabbitMQ user per process, and who may send which reply.

Derived from the queues the processes declare (contracts.asyncapi.consumer_queues) and the registry of
message types, never written out by hand: orderctl broker-users creates exactly this, and the Kubernetes
User, Permission and TopicPermission resources (deploy/k8s/components/broker-users) must say the same (a unit
test compares them). docs/security.md, "Broker permissions", explains the choices.

RabbitMQ checks, per operation: exchange.declare needs *configure* on the exchange; queue.declare needs
*configure* on the queue, and with a dead-letter exchange also *read* on the queue and *write* on that
exchange; queue.bind needs *write* on the queue and *read* on the exchange (and, on a topic exchange, the
binding key must match the user's topic *read* pattern); basic.consume needs *read* on the queue;
basic.publish needs *write* on the exchange (on a topic exchange the routing key must match the topic
*write* pattern); queue.delete needs *configure* on the queue.
"""

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from contracts.asyncapi import consumer_queues
from contracts.registry import MESSAGES
from plumbing.replies import CommandFailed
from plumbing.topology import (
    COMMANDS_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    EVENTS_EXCHANGE,
    REPLIES_EXCHANGE,
    dq_name,
)

ORCHESTRATOR = "orchestrator"
#: The services that receive commands, in the registry's order.
SERVICES: tuple[str, ...] = tuple(
    dict.fromkeys(s.routing_key.split(".", 1)[0] for s in MESSAGES if s.kind == "command")
)
PROCESSES: tuple[str, ...] = (ORCHESTRATOR, *SERVICES)
#: Every process declares all four exchanges at start (plumbing.topology.declare_exchanges), in any order.
EXCHANGES: tuple[str, ...] = (EVENTS_EXCHANGE, COMMANDS_EXCHANGE, REPLIES_EXCHANGE, DEAD_LETTER_EXCHANGE)
#: User names are "<prefix><process>"; the orchestrator reads the prefix off its own user name.
USER_PREFIX = "orderflow-"
#: Exchanges whose receivers check the sender (the AMQP user-id): a replay must keep the original one.
SENDER_CHECKED_EXCHANGES = frozenset({REPLIES_EXCHANGE})
#: Matches nothing: RabbitMQ takes "" as "no access", but a topic pattern needs a regex that never matches.
NOTHING = "^$"


@dataclass(frozen=True)
class Grant:
    """One user's permissions on the vhost: three regular expressions over resource names."""

    configure: str
    write: str
    read: str


@dataclass(frozen=True)
class TopicGrant:
    """Routing keys a user may publish (write) or bind with (read) on one topic exchange."""

    exchange: str
    write: str
    read: str


@dataclass(frozen=True)
class Access:
    """What one process's user may do."""

    process: str
    grant: Grant
    topics: tuple[TopicGrant, ...]


def user_name(process: str, prefix: str = USER_PREFIX) -> str:
    return f"{prefix}{process}"


def any_of(names: list[str] | tuple[str, ...]) -> str:
    """A regex matching exactly these names (sorted, so the manifests compare as text)."""
    if not names:
        return ""
    return "^(" + "|".join(re.escape(n) for n in sorted(set(names))) + ")$"


def _keys(patterns: list[str]) -> str:
    """A regex matching binding keys that are exactly these ('#' and '*' as written, not as wildcards)."""
    return any_of(patterns) if patterns else NOTHING


def _declared_queues(process: str) -> dict[str, list[tuple[str, str]]]:
    """The queues ``process`` declares, with their bindings. The orchestrator also declares every command
    queue the workflow sends to, so a command is never unroutable (orchestrator.main)."""
    queues = consumer_queues()
    own = {q: b for q, b in queues.items() if q.split(".", 1)[0] == process}
    if process == ORCHESTRATOR:
        own |= {q: b for q, b in queues.items() if any(e == COMMANDS_EXCHANGE for e, _ in b)}
    return own


def _publishes_to(process: str) -> set[str]:
    """Exchanges ``process`` publishes to: its messages' exchanges by the registry, and the dead-letter one."""
    kinds = {"command", "event"} if process == ORCHESTRATOR else {"reply"}
    return {s.exchange for s in MESSAGES if s.kind in kinds and not s.from_client} | {DEAD_LETTER_EXCHANGE}


def access(process: str) -> Access:
    queues = _declared_queues(process)
    names = [name for q in queues for name in (q, dq_name(q))]
    bound = {e for bindings in queues.values() for e, _ in bindings}
    # Topic exchanges it binds to: only its own binding keys, so it cannot bind its queue to another's commands.
    topics = []
    for exchange in (EVENTS_EXCHANGE, COMMANDS_EXCHANGE):
        keys = [k for bindings in queues.values() for e, k in bindings if e == exchange]
        writes = [s.routing_key for s in MESSAGES if s.exchange == exchange and not s.from_client]
        if keys or exchange in _publishes_to(process):
            write = _write_keys(writes) if exchange in _publishes_to(process) else NOTHING
            topics.append(TopicGrant(exchange=exchange, write=write, read=_keys(keys)))
    return Access(
        process=process,
        grant=Grant(
            configure=any_of([*EXCHANGES, *names]),
            write=any_of([*names, *_publishes_to(process)]),
            read=any_of([*names, *bound, DEAD_LETTER_EXCHANGE]),
        ),
        topics=tuple(topics),
    )


def _write_keys(routing_keys: list[str]) -> str:
    """Routing keys the orchestrator publishes with: "<service>." prefixes of commands, "order." of events."""
    prefixes = sorted({k.split(".", 1)[0] for k in routing_keys})
    return "^(" + "|".join(re.escape(p) for p in prefixes) + r")\."


def table() -> dict[str, Access]:
    """Every process's access, by process name."""
    return {p: access(p) for p in PROCESSES}


# -- who may send which reply --------------------------------------------------------------------
def _reply_senders() -> dict[str, frozenset[str]]:
    """Each reply type and the process that may send it: the service whose commands share its contracts
    module; CommandFailed (plumbing.replies) from any service."""
    by_module = {s.model.__module__: s.routing_key.split(".", 1)[0] for s in MESSAGES if s.kind == "command"}
    senders = {
        s.model.__name__: frozenset({by_module[s.model.__module__]})
        for s in MESSAGES
        if s.kind == "reply" and s.model is not CommandFailed
    }
    senders[CommandFailed.__name__] = frozenset(SERVICES)
    return senders


#: Reply type -> the processes whose user may send it.
REPLY_SENDERS: dict[str, frozenset[str]] = _reply_senders()


def amqp_user(url: str) -> str:
    """The user name an AMQP URL logs in as."""
    return unquote(urlsplit(url).username or "guest")


def prefix_of(own_user: str, process: str) -> str | None:
    """The prefix of per-process user names, read off this process's own; None when its user is not named
    after it (a user every process shares, such as guest on a development machine)."""
    return own_user[: -len(process)] if own_user.endswith(process) else None


def sender_refusal(message_type: str, user_id: str | None, *, own_user: str, own_process: str) -> str | None:
    """Why a reply of ``message_type`` sent by ``user_id`` (the AMQP user-id, which the broker checked) must not
    be applied, or None when it may. A message sent with this process's own user passes: where every process
    shares one user nothing else can be told apart, and where each has its own nobody else holds it. Where the
    users are shared (this process's user is not named after it), a message without a user-id passes too: a
    publisher older than the user-id stamp, during an upgrade, is no less trusted than any other there."""
    if user_id is not None and user_id == own_user:
        return None
    senders = REPLY_SENDERS.get(message_type)
    if senders is None:
        return None
    prefix = prefix_of(own_user, own_process)
    if prefix is None and user_id is None:
        return None
    allowed = sorted(user_name(p, prefix) for p in senders) if prefix is not None else []
    if user_id in allowed:
        return None
    expected = ", ".join(allowed) if allowed else f"{own_user} (every process shares it)"
    return f"forged: {message_type} may come only from {expected}, not from user {user_id or '(none)'}"
