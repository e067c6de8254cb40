"""Versioned SQL migrations: numbered files applied once each, in order, in a transaction.

A database's migrations come from several directories (the plumbing's outbox
and inbox tables, then the service's own), each under its own namespace.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

PLUMBING_MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it keeps two migrators of one database from interleaving.
_LOCK_KEY = 0x0F10_0001


@dataclass(frozen=True)
class MigrationSet:
    namespace: str
    directory: Path

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))


async def migrate(dsn: str, sets: list[MigrationSet]) -> list[str]:
    """Apply what is missing of ``sets`` to the database at ``dsn``; return what was applied."""
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   namespace text NOT NULL,
                   version text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (namespace, version))"""
        )
        for migration_set in sets:
            done = {
                r["version"]
                for r in await conn.fetch(
                    "SELECT version FROM schema_migrations WHERE namespace = $1",
                    migration_set.namespace,
                )
            }
            for path in migration_set.files():
                if path.stem in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute(
                        "INSERT INTO schema_migrations (namespace, version) VALUES ($1, $2)",
                        migration_set.namespace,
                        path.stem,
                    )
                applied.append(f"{migration_set.namespace}/{path.stem}")
                log.info("migration applied", extra={"fields": {"migration": applied[-1]}})
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()
    return applied
