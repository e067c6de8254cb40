"""The inventory process."""

from pathlib import Path
from typing import get_args

import asyncpg
from pydantic import Field

from contracts.inventory import (
    CheckInventory,
    CommitReservation,
    ReleaseInventory,
    ReserveInventory,
    ReserveInventoryLine,
    RestockOrder,
)
from contracts.orders import OrderOutcome, OrderStatus
from plumbing.commands import command_route
from plumbing.consumer import Route
from plumbing.process import Process, QueueSpec, command_process, run_process, service_migrations
from plumbing.settings import ProcessSettings
from plumbing.topology import EVENTS_EXCHANGE, q_name
from services.inventory import handlers, maintenance

SERVICE = "inventory"
MIGRATIONS = service_migrations(SERVICE, Path(__file__).parent / "migrations")


class InventorySettings(ProcessSettings):
    database_url: str = "postgresql://orderflow_inventory@127.0.0.1:5432/orderflow_inventory"
    http_port: int = 8001
    reservation_max_age_seconds: float = Field(
        3600, gt=0, description="The sweeper releases reservations active for longer: above the longest saga."
    )
    maintenance_interval_seconds: float = Field(300, gt=0, description="How often the sweeper and purge run.")
    idempotency_retention_days: int = Field(7, ge=1, description="The guide's 7-day idempotency cache.")


def build(settings: InventorySettings) -> Process:
    process = command_process(
        SERVICE,
        settings,
        {
            "CheckInventory": command_route(CheckInventory, handlers.check_inventory),
            "ReserveInventory": command_route(ReserveInventory, handlers.reserve_inventory),
            "ReserveInventoryLine": command_route(ReserveInventoryLine, handlers.reserve_inventory_line),
            "ReleaseInventory": command_route(ReleaseInventory, handlers.release_inventory),
            "CommitReservation": command_route(CommitReservation, handlers.commit_reservation),
            "RestockOrder": command_route(RestockOrder, handlers.restock_order),
        },
    )
    process.queues.append(
        QueueSpec(
            queue=q_name(SERVICE, "order-events"),
            # Every outcome (not order.rejected: a rejected order never reserved anything).
            bindings=[(EVENTS_EXCHANGE, f"order.{status.lower()}") for status in get_args(OrderStatus)],
            routes={"OrderOutcome": Route(OrderOutcome, handlers.record_outcome)},
            default_type="OrderOutcome",
        )
    )

    def pool() -> asyncpg.Pool:
        assert process.pool is not None
        return process.pool

    async def maintain() -> None:
        await maintenance.run(
            pool,
            interval_seconds=settings.maintenance_interval_seconds,
            max_age_seconds=settings.reservation_max_age_seconds,
            retention_days=settings.idempotency_retention_days,
        )

    process.background.append(maintain)
    return process


def main() -> None:
    run_process(build(InventorySettings()))


if __name__ == "__main__":
    main()
