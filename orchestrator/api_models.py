"""The request and response bodies of the orchestrator's API (/api/v1), as pydantic models.

They are the API's contract twice over: handlers build their answers from them, and orchestrator/openapi.py
takes their JSON Schemas (2020-12, which OpenAPI 3.1 uses as it is) into the OpenAPI document. Field names are
camelCase as in the saga's own documents. A field's description is what the document says of it.
"""

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts.base import HeaderText, Money
from contracts.orders import CancellationStatus, OrderStatus

SagaStatus = Literal["RUNNING", OrderStatus, CancellationStatus]
SAGA_STATUSES: tuple[str, ...] = ("RUNNING", *get_args(OrderStatus), *get_args(CancellationStatus))
#: Sagas a redrive may restart: those that ended with a compensation that failed, and cancellations whose step
#: still failed after its retries (from that step, same idempotency keys). Any other end is final (CONFIRMED,
#: CANCELLED, a compensated failure, CANCELLED_BY_CUSTOMER), and a RUNNING saga is still being driven.
REDRIVABLE: frozenset[str] = frozenset({"FAILED_CRITICAL", "CANCELLATION_FAILED"})
#: Page sizes of the listing, and how many sagas one bulk redrive may restart.
DEFAULT_PAGE, MAX_PAGE = 50, 500
DEFAULT_BULK, MAX_BULK = 100, 500


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SagaFilter(Model):
    """Which sagas: every given filter holds (AND); several values of one filter are alternatives (OR)."""

    status: list[SagaStatus] = Field(default_factory=list, description="The saga's status, one of several.")
    step: list[str] = Field(
        default_factory=list, description="The state the saga is in, or ended in (e.g. ProcessPayment)."
    )
    error: list[str] = Field(
        default_factory=list,
        description="The name of an error the saga recorded anywhere in its history: the one it ended with, or any "
        "a step, a retry, a branch or a compensation met on the way (e.g. RefundFailed finds a FAILED_CRITICAL "
        "saga whose refund failed though it ended with OrderFailedCritical; CancelledByOperator finds the sagas "
        "an operator stopped).",
    )
    product: str | None = Field(None, max_length=100, description="A product id one of the order's lines holds.")
    q: str | None = Field(
        None, min_length=1, max_length=128, description="Text the order id contains (case-sensitive, no wildcards)."
    )
    createdFrom: AwareDatetime | None = Field(None, description="Started at or after this time.")
    createdTo: AwareDatetime | None = Field(None, description="Started before this time.")
    updatedFrom: AwareDatetime | None = Field(None, description="Last changed at or after this time.")
    updatedTo: AwareDatetime | None = Field(
        None, description="Last changed before this time: with status RUNNING, the stuck sagas."
    )


class ListQuery(SagaFilter):
    """The query string of GET /api/v1/sagas: a filter, a page size and where to continue."""

    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE, description="Sagas per page.")
    cursor: str | None = Field(
        None, max_length=1000, description="The nextCursor of the previous page (opaque); absent: the first page."
    )


class ErrorInfo(BaseModel):
    Error: str = Field(description="The error's name, e.g. PaymentDeclined or States.Timeout.")
    Cause: str | None = Field(None, description="What happened, in words.")


class SagaSummary(BaseModel):
    """One saga in a listing."""

    orderId: str
    status: SagaStatus
    currentStep: str | None = Field(description="The state it is in; for a finished saga, the one it ended in.")
    error: ErrorInfo | None = Field(description="Why it failed, if it did.")
    createdAt: datetime
    updatedAt: datetime
    redriveCount: int = Field(description="How often it was redriven.")
    workflowName: str | None = Field(
        None,
        description="Its workflow: order, or cancellation (keyed '<orderId> cancel'); null: an order saga "
        "from before workflows were named.",
    )
    workflowVersion: str | None = Field(description="The version of the definition it runs on.")


class SagaPage(BaseModel):
    """A page of sagas, newest first, and the counts by status of everything the filter matches."""

    items: list[SagaSummary]
    nextCursor: str | None = Field(description="Pass it as cursor for the next page; null on the last page.")
    total: int = Field(description="Sagas the whole filter matches, on every page.")
    counts: dict[str, int] = Field(
        description="For every status, the sagas matching the filter's other parts (the status filter aside): "
        "what each status would list. Statuses with none are 0."
    )


class Attempt(BaseModel):
    """One run of a task: its command, how it ended, and its error."""

    attempt: int | None
    commandId: str
    outcome: Literal["running", "succeeded", "failed", "timed_out", "cancelled"] = Field(
        description="cancelled: the saga was stopped by an operator while this run waited (its reply, if one "
        "comes, is recorded as LateReplyIgnored)."
    )
    startedAt: datetime
    endedAt: datetime | None
    durationSeconds: float | None
    error: str | None
    cause: str | None
    reconcile: bool = Field(False, description="A reconcile (asking the service what became of a timed-out run).")


class Step(BaseModel):
    """A state the saga ran, in one lane (the main flow or a Parallel's branch), with every attempt."""

    step: str
    lane: str
    outcome: Literal["running", "succeeded", "failed", "timed_out", "cancelled"] = Field(
        description="Its last attempt's."
    )
    startedAt: datetime
    endedAt: datetime | None
    attempts: list[Attempt]


class HistoryEvent(BaseModel):
    """One row of the saga's history, as Step Functions' execution history; audit entries are here too."""

    id: int
    at: datetime
    event: str
    state: str | None
    lane: str
    attempt: int | None
    commandId: str | None
    error: str | None
    cause: str | None
    detail: dict[str, Any] | None


class Workflow(BaseModel):
    name: str | None
    version: str | None


class Redrivability(BaseModel):
    redrivable: bool
    reason: str | None = Field(description="Why not, when it is not.")


class SagaDetail(BaseModel):
    """Everything about one saga."""

    orderId: str
    status: SagaStatus
    currentStep: str | None
    error: ErrorInfo | None
    notificationError: ErrorInfo | None = Field(description="Set when the order stands but the customer was not told.")
    redriveCount: int
    redrive: Redrivability
    workflow: Workflow
    version: int = Field(description="Transitions so far (the saga row's version).")
    createdAt: datetime
    updatedAt: datetime
    durationSeconds: float | None = Field(description="From start to its end; null while it runs.")
    amount: Any = Field(None, description="The order's total, once the inventory priced it.")
    currency: str | None = None
    compensation: Any = Field(None, description="What the compensations returned ($.compensation), if any ran.")
    input: dict[str, Any] | None = Field(description="The order as it was requested (OrderRequested).")
    steps: list[Step]
    history: list[HistoryEvent]


class RedriveRequest(Model):
    """Body of a single redrive (optional)."""

    reason: str | None = Field(None, max_length=500, description="Why, for the audit entry.")


class Actor(BaseModel):
    """Who made a mutating call, and from where: the audit entry's detail."""

    tokenId: int | None = Field(description="The API token's id; null for an OIDC JWT.")
    token: str = Field(description="The token's name; for an OIDC JWT the person's (preferred_username, email, sub).")
    role: str
    subject: str | None = Field(None, description="An OIDC JWT's subject (sub); null for an API token.")
    address: str | None = Field(description="The peer's address (an ingress controller's, when one is in front).")
    forwardedFor: str | None = Field(description="The X-Forwarded-For header, if the request carried one.")


class RedriveResult(BaseModel):
    orderId: str
    status: SagaStatus = Field(description="RUNNING: the saga goes on from the step that failed.")
    redriveCount: int
    restarted: list[str] = Field(description="The steps whose commands were sent again.")
    auditedAt: datetime
    by: Actor


class BulkRedriveRequest(Model):
    """Redrive the redrivable sagas a filter matches, newest first; with dryRun only say which."""

    filter: SagaFilter = Field(default_factory=SagaFilter)
    dryRun: bool = Field(True, description="true (the default): change nothing, list what would be redriven.")
    limit: int = Field(DEFAULT_BULK, ge=1, le=MAX_BULK, description="Redrive at most this many.")
    reason: str | None = Field(None, max_length=500, description="Why, for each saga's audit entry.")


class BulkFailure(BaseModel):
    orderId: str
    reason: str


class BulkRedriveResult(BaseModel):
    dryRun: bool
    matched: int = Field(description="Redrivable sagas the filter matches (can exceed limit).")
    orderIds: list[str] = Field(description="The sagas redriven, or with dryRun those that would be.")
    failed: list[BulkFailure] = Field(description="Sagas that could not be redriven after all (changed meanwhile).")
    truncated: bool = Field(description="More sagas matched than limit: run it again for the rest.")


#: A client's Idempotency-Key header on a refund: printable ASCII, no spaces (it becomes part of Stripe's key).
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7E]{1,100}$"
RefundAmount = Annotated[Money, Field(gt=0)]


class RefundRequest(Model):
    """Body of a manual refund: how much (all that remains when absent) and why."""

    amount: RefundAmount | None = Field(
        None,
        description="In the order's currency, major units (12.50); at most what the charge still holds. "
        "Absent: all that remains.",
    )
    reason: Annotated[HeaderText, Field(min_length=1, max_length=400)] = Field(
        description="Why, for the audit entry and the refund's Stripe metadata (one line, up to 400 characters)."
    )


class RefundResult(BaseModel):
    """A manual refund: asked (pending) or, for a repeated Idempotency-Key, how it ended."""

    orderId: str
    requestKey: str = Field(description="The request's Idempotency-Key header, or the one the API made.")
    commandId: str = Field(description="The RefundPayment command's id; its reply's causation id.")
    idempotencyKey: str = Field(description="Stripe's Idempotency-Key: {orderId}-manual-refund-{requestKey}.")
    status: Literal["pending", "succeeded", "failed"] = Field(
        description="pending until the payment service answers; the saga's history then gets "
        "ManualRefundSucceeded or ManualRefundFailed."
    )
    amount: float | None = Field(description="The amount asked; null: all that remained.")
    expected: float = Field(description="What the refund gives back by the saga's records.")
    currency: str
    reason: str
    refunded: float | None = Field(None, description="What the payment service refunded, once it succeeded.")
    refundId: str | None = Field(None, description="Stripe's refund id, once it succeeded.")
    error: str | None = Field(None, description="Why it failed (e.g. RefundExceedsCharge), if it did.")
    cause: str | None = None
    requestedAt: datetime
    by: Actor
    replayed: bool = Field(description="true: an earlier request with the same Idempotency-Key; nothing was sent.")


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (application/problem+json). Other members may follow."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
