"""The orders process."""

from pathlib import Path

from contracts.records import CreateOrderRecord, VoidOrderRecord
from plumbing.commands import command_route
from plumbing.process import Process, command_process, run_process, service_migrations
from plumbing.settings import ProcessSettings
from services.orders import handlers

SERVICE = "orders"
MIGRATIONS = service_migrations(SERVICE, Path(__file__).parent / "migrations")


class OrdersSettings(ProcessSettings):
    database_url: str = "postgresql://orderflow_orders@127.0.0.1:5432/orderflow_orders"
    http_port: int = 8003


def build(settings: OrdersSettings) -> Process:
    return command_process(
        SERVICE,
        settings,
        {
            "CreateOrderRecord": command_route(CreateOrderRecord, handlers.create_order_record),
            "VoidOrderRecord": command_route(VoidOrderRecord, handlers.void_order_record),
        },
    )


def main() -> None:
    run_process(build(OrdersSettings()))


if __name__ == "__main__":
    main()
