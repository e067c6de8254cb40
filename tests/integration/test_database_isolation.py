"""Each process's role reaches only its own database: no service can read another's data."""

import asyncpg
import pytest
from harness import Stack

from orderctl.config import SERVICES
from plumbing.db import database_name, role_name

pytestmark = pytest.mark.integration


async def test_each_role_connects_only_to_its_own_database(stack: Stack) -> None:
    for owner in SERVICES:
        own_url = stack.settings.database_url(owner.name)
        conn = await asyncpg.connect(own_url)
        await conn.close()
        for other in SERVICES:
            if other.name == owner.name:
                continue
            role = role_name(stack.settings.database_url(other.name))
            intruder = own_url.replace(f"//{role_name(own_url)}@", f"//{role}@")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for database"):
                await asyncpg.connect(intruder)
            assert database_name(intruder) == database_name(own_url)
