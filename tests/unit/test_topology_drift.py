"""The queues the AsyncAPI document describes are the queues the processes declare."""

import pytest

from contracts.asyncapi import consumer_queues
from orchestrator.main import OrchestratorSettings
from orchestrator.main import build as build_orchestrator
from services.inventory.main import InventorySettings
from services.inventory.main import build as build_inventory
from services.notify.main import NotifySettings
from services.notify.main import build as build_notify
from services.orders.main import OrdersSettings
from services.orders.main import build as build_orders
from services.payment.main import PaymentSettings
from services.payment.main import build as build_payment

pytestmark = pytest.mark.unit


def test_documented_queues_are_the_declared_queues() -> None:
    processes = [
        build_orchestrator(OrchestratorSettings()),
        build_inventory(InventorySettings()),
        build_payment(PaymentSettings()),
        build_orders(OrdersSettings()),
        build_notify(NotifySettings()),
    ]
    declared = {spec.queue: spec.bindings for process in processes for spec in process.queues}
    assert declared == consumer_queues()
