"""Definition validation, and workflow.json against the guide's numbers."""

import copy
from typing import Any

import pytest

from orchestrator.definition import DefinitionError, ParallelState, TaskState, Workflow, load, parse

pytestmark = pytest.mark.unit


def doc(**task: Any) -> dict[str, Any]:
    """A one-task definition; keyword arguments override fields of task 'A'."""
    state: dict[str, Any] = {"Type": "Task", "Resource": "svc.A", "End": True}
    state.update(task)
    return {"StartAt": "A", "States": {"A": state, "Done": {"Type": "Succeed"}}}


def rejected(document: dict[str, Any]) -> str:
    with pytest.raises(DefinitionError) as info:
        parse(document)
    return str(info.value)


# -- validation --------------------------------------------------------------------------------
def test_a_minimal_definition_parses() -> None:
    workflow = parse(doc(Retry=[{"ErrorEquals": ["X"]}], Catch=[{"ErrorEquals": ["States.ALL"], "Next": "Done"}]))
    task = workflow.state("A")
    assert isinstance(task, TaskState)
    assert (task.service, task.command) == ("svc", "A")


def test_unknown_next_is_rejected() -> None:
    message = rejected(doc(End=None, Next="Nowhere"))
    assert "Next 'Nowhere' is not a state" in message
    assert "A:" in message


def test_unknown_catch_next_is_rejected() -> None:
    assert "Next 'Nowhere' is not a state" in rejected(doc(Catch=[{"ErrorEquals": ["X"], "Next": "Nowhere"}]))


def test_unknown_start_at_is_rejected() -> None:
    document = doc()
    document["StartAt"] = "Missing"
    assert "StartAt 'Missing' is not a state" in rejected(document)


def test_unknown_next_inside_a_parallel_branch_is_rejected() -> None:
    document = {
        "StartAt": "P",
        "States": {
            "P": {
                "Type": "Parallel",
                "End": True,
                "Branches": [{"StartAt": "B", "States": {"B": {"Type": "Task", "Resource": "s.B", "Next": "Gone"}}}],
            }
        },
    }
    message = rejected(document)
    assert "P/Branches[0]" in message
    assert "Next 'Gone' is not a state" in message


def test_states_all_must_be_alone_in_a_retrier() -> None:
    message = rejected(doc(Retry=[{"ErrorEquals": ["States.ALL", "X"]}]))
    assert "States.ALL must appear alone" in message
    assert "Retry.0.ErrorEquals" in message


def test_states_all_must_be_alone_in_a_catcher() -> None:
    assert "States.ALL must appear alone" in rejected(doc(Catch=[{"ErrorEquals": ["X", "States.ALL"], "Next": "Done"}]))


def test_states_all_must_be_in_the_last_retrier() -> None:
    message = rejected(doc(Retry=[{"ErrorEquals": ["States.ALL"]}, {"ErrorEquals": ["X"]}]))
    assert "States.ALL must be in the last retrier" in message


def test_states_all_must_be_in_the_last_catcher() -> None:
    catchers = [{"ErrorEquals": ["States.ALL"], "Next": "Done"}, {"ErrorEquals": ["X"], "Next": "Done"}]
    assert "States.ALL must be in the last catcher" in rejected(doc(Catch=catchers))


def test_backoff_rate_below_one_is_rejected() -> None:
    message = rejected(doc(Retry=[{"ErrorEquals": ["X"], "BackoffRate": 0.5}]))
    assert "BackoffRate" in message
    assert "greater than or equal to 1" in message


def test_backoff_rate_of_exactly_one_is_allowed() -> None:
    parse(doc(Retry=[{"ErrorEquals": ["X"], "BackoffRate": 1}]))


def test_negative_max_attempts_is_rejected() -> None:
    message = rejected(doc(Retry=[{"ErrorEquals": ["X"], "MaxAttempts": -1}]))
    assert "MaxAttempts" in message
    assert "greater than or equal to 0" in message


def test_max_attempts_zero_is_allowed() -> None:
    parse(doc(Retry=[{"ErrorEquals": ["X"], "MaxAttempts": 0}]))


@pytest.mark.parametrize("where", ["Retry", "Catch"])
def test_own_error_names_may_not_start_with_states(where: str) -> None:
    entry: dict[str, Any] = {"ErrorEquals": ["States.MyError"]}
    if where == "Catch":
        entry["Next"] = "Done"
    message = rejected(doc(**{where: [entry]}))
    assert "'States.MyError'" in message
    assert "reserved" in message


@pytest.mark.parametrize("name", ["States.ALL", "States.TaskFailed", "States.Timeout"])
def test_predefined_error_names_are_allowed(name: str) -> None:
    parse(doc(Retry=[{"ErrorEquals": [name]}]))


def test_empty_error_equals_is_rejected() -> None:
    assert "at least one error" in rejected(doc(Retry=[{"ErrorEquals": []}]))


def test_next_and_end_together_are_rejected() -> None:
    assert "exactly one of Next and End" in rejected(doc(Next="Done"))


def test_unknown_fields_are_rejected() -> None:
    assert "Retries" in rejected(doc(Retries=[]))


def test_every_problem_is_reported_in_one_message() -> None:
    message = rejected(doc(Retry=[{"ErrorEquals": ["X"], "BackoffRate": 0.5, "MaxAttempts": -1}]))
    assert "BackoffRate" in message and "MaxAttempts" in message


# -- workflow.json -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workflow() -> Workflow:
    return load()


def task(workflow: Workflow, name: str) -> TaskState:
    state = workflow.state(name)
    assert isinstance(state, TaskState)
    return state


def numbers(workflow: Workflow, name: str) -> list[tuple[float, int, float]]:
    """The retriers that retry; a MaxAttempts 0 entry only keeps its errors from the later ones."""
    return [(r.IntervalSeconds, r.MaxAttempts, r.BackoffRate) for r in task(workflow, name).Retry if r.MaxAttempts]


def test_workflow_json_loads_and_starts_at_check_inventory(workflow: Workflow) -> None:
    assert workflow.StartAt == "CheckInventory"


def test_workflow_json_is_not_mutated_by_parsing(workflow: Workflow) -> None:
    dumped = workflow.model_dump(exclude_none=True)
    assert parse(copy.deepcopy(dumped)) == workflow


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("CheckInventory", [(2, 3, 2), (1, 2, 1.5)]),
        ("ReserveInventory", [(1, 5, 2), (2, 3, 2)]),
        ("ProcessPayment", [(2, 2, 2), (5, 1, 2.0)]),
        ("CreateOrderRecord", [(1, 5, 2), (2, 3, 2)]),
        ("NotifyCustomer", [(2, 3, 2), (5, 4, 2)]),
    ],
)
def test_retry_tables_are_the_guides_numbers(workflow: Workflow, state: str, expected: list[tuple]) -> None:
    assert numbers(workflow, state) == expected


def test_check_inventory_last_retrier_is_states_task_failed(workflow: Workflow) -> None:
    last = task(workflow, "CheckInventory").Retry[-1]
    assert last.ErrorEquals == ["States.TaskFailed"]
    assert (last.IntervalSeconds, last.MaxAttempts, last.BackoffRate) == (1, 2, 1.5)


def test_process_payment_retries_a_timeout_once_after_5_seconds(workflow: Workflow) -> None:
    timeout_retrier = task(workflow, "ProcessPayment").Retry[-1]
    assert timeout_retrier.ErrorEquals == ["States.Timeout"]
    assert (timeout_retrier.IntervalSeconds, timeout_retrier.MaxAttempts) == (5, 1)


@pytest.mark.parametrize(
    ("state", "seconds"),
    [
        ("CheckInventory", 30),
        ("ReserveInventory", 30),
        ("ProcessPayment", 60),
        ("CreateOrderRecord", 30),
        ("NotifyCustomer", 45),
    ],
)
def test_task_timeouts_are_the_guides(workflow: Workflow, state: str, seconds: int) -> None:
    assert task(workflow, state).TimeoutSeconds == seconds


@pytest.mark.parametrize("name", ["RefundPaymentAndRelease", "PaymentOutcomeUnknown"])
def test_parallel_compensation_timeout_is_120_seconds(workflow: Workflow, name: str) -> None:
    parallel = workflow.state(name)
    assert isinstance(parallel, ParallelState)
    assert parallel.TimeoutSeconds == 120
    starts = [b.StartAt for b in parallel.Branches]
    # After CreateOrderRecord the record is voided too (a late create must not confirm a compensated order).
    assert starts == ["RefundPayment", "ReleaseInventory"] + (
        ["VoidOrderRecord"] if name == "RefundPaymentAndRelease" else []
    )


@pytest.mark.parametrize(
    ("state", "catches"),
    [
        (
            "CheckInventory",
            [
                (["InsufficientStockError"], "InsufficientInventory"),
                (["InventoryError"], "InventoryCheckFailed"),
                (["States.ALL"], "InventoryCheckFailed"),
            ],
        ),
        (
            "ReserveInventory",
            [
                (["InsufficientStockError"], "InsufficientInventory"),
                (["InventoryError"], "ReservationFailed"),
                (["States.ALL"], "ReservationFailed"),
            ],
        ),
        (
            "ProcessPayment",
            [
                (["PaymentDeclined", "InsufficientFunds", "CardError"], "ReleaseReservedInventory"),
                (["PaymentFailed"], "ReleaseReservedInventory"),
                (["States.ALL"], "PaymentOutcomeUnknown"),
            ],
        ),
        (
            "CreateOrderRecord",
            [(["OrderRecordError"], "RefundPaymentAndRelease"), (["States.ALL"], "RefundPaymentAndRelease")],
        ),
        ("NotifyCustomer", [(["States.ALL"], "OrderSuccess")]),
    ],
)
def test_catch_tables_follow_the_guide(workflow: Workflow, state: str, catches: list[tuple]) -> None:
    assert [(c.ErrorEquals, c.Next) for c in task(workflow, state).Catch] == catches


def test_notification_errors_go_to_notification_error(workflow: Workflow) -> None:
    assert task(workflow, "NotifyCustomer").Catch[0].ResultPath == "$.notificationError"


def test_branch_states_are_addressed_by_path(workflow: Workflow) -> None:
    refund = workflow.state("RefundPaymentAndRelease/0/RefundPayment")
    release = workflow.state("RefundPaymentAndRelease/1/ReleaseInventory")
    assert isinstance(refund, TaskState) and refund.Resource == "payment.RefundPayment"
    assert isinstance(release, TaskState) and release.Resource == "inventory.ReleaseInventory"
