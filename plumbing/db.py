"""PostgreSQL pool creation and database provisioning."""

import json
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns come and go as Python objects, not strings.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _release_as_is(conn: asyncpg.Connection) -> None:
    """Return a connection to the pool without asyncpg's reset query (pg_advisory_unlock_all, CLOSE ALL,
    UNLISTEN *, RESET ALL): one round trip and one transaction per handled message, undoing what our code
    never does on a pooled connection. Our advisory locks are transaction-scoped, we open no cursors outside
    transactions, set nothing for the session, and the listeners remove themselves (UNLISTEN) before they
    release. asyncpg still rolls back a transaction left open and forgets the listeners."""


async def create_pool(dsn: str, *, size: int = 8) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=size, init=_init_connection, reset=_release_as_is, command_timeout=30
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def role_name(dsn: str) -> str:
    return urlsplit(dsn).username or ""


def with_password(dsn: str, password: str) -> str:
    """``dsn`` with ``password`` in it, percent-encoded: any password survives the URL (asyncpg decodes it)."""
    parts = urlsplit(dsn)
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def _ident(name: str) -> str:
    """Quote an identifier; names come from configuration, never from messages."""
    return '"' + name.replace('"', '""') + '"'


async def ensure_database(admin_dsn: str, dsn: str) -> bool:
    """Create the role and the database ``dsn`` names, owned by that role, if missing.

    The role may log in and reaches only its own database: CONNECT is revoked
    from PUBLIC. Returns True when the database was created.
    """
    database, role = database_name(dsn), role_name(dsn)
    # A URL carries its password percent-encoded (with_password): the role gets the password itself.
    password = unquote(urlsplit(dsn).password or "")
    admin = await asyncpg.connect(admin_dsn)
    try:
        if role and not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            statement = f"CREATE ROLE {_ident(role)} LOGIN"
            if password:
                statement += " PASSWORD " + "'" + password.replace("'", "''") + "'"
            await admin.execute(statement)
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            return False
        owner = f" OWNER {_ident(role)}" if role else ""
        await admin.execute(f"CREATE DATABASE {_ident(database)}{owner}")
        await admin.execute(f"REVOKE CONNECT ON DATABASE {_ident(database)} FROM PUBLIC")
        if role:
            await admin.execute(f"GRANT CONNECT ON DATABASE {_ident(database)} TO {_ident(role)}")
        return True
    finally:
        await admin.close()


async def drop_database(admin_dsn: str, database: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {_ident(database)} WITH (FORCE)")
    finally:
        await admin.close()
