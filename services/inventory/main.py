"""The inventory process."""

import asyncio
from pathlib import Path

from contracts.inventory import CheckInventory, ReleaseInventory, ReserveInventory
from plumbing.commands import command_route
from plumbing.process import Process, command_process, service_migrations
from plumbing.settings import ProcessSettings
from services.inventory import handlers

SERVICE = "inventory"
MIGRATIONS = service_migrations(SERVICE, Path(__file__).parent / "migrations")


class InventorySettings(ProcessSettings):
    database_url: str = "postgresql://orderflow_inventory@127.0.0.1:5432/orderflow_inventory"
    http_port: int = 8001


def build(settings: InventorySettings) -> Process:
    return command_process(
        SERVICE,
        settings,
        {
            "CheckInventory": command_route(CheckInventory, handlers.check_inventory),
            "ReserveInventory": command_route(ReserveInventory, handlers.reserve_inventory),
            "ReleaseInventory": command_route(ReleaseInventory, handlers.release_inventory),
        },
    )


def main() -> None:
    asyncio.run(build(InventorySettings()).run())


if __name__ == "__main__":
    main()
