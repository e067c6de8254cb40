"""``orderctl migrate``: create each process's role and database if missing, then apply its migrations."""

from orderctl.config import SERVICES, CtlSettings
from orderctl.reach import reaching_database
from plumbing.db import ensure_database
from plumbing.migrations import migrate


async def migrate_all(settings: CtlSettings, *, only: str | None = None) -> dict[str, list[str]]:
    settings.refuse_development_defaults(only=only)
    applied: dict[str, list[str]] = {}
    for spec in SERVICES:
        if only and spec.name != only:
            continue
        url = settings.database_url(spec.name)
        with reaching_database(settings, "admin"):
            await ensure_database(settings.admin_database_url, url)
        with reaching_database(settings, spec.name):
            applied[spec.name] = await migrate(url, spec.migrations)
    return applied
