"""The route table of the orchestrator's API: each route's method, path, handler, role and models.

One table serves twice: orchestrator/api.py registers these routes, and orchestrator/openapi.py writes the
OpenAPI document from them, so the document lists exactly what the application serves.
"""

from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel

from orchestrator import api_cancel, api_sagas
from orchestrator.api_auth import role_for_method
from orchestrator.api_models import (
    BulkRedriveRequest,
    BulkRedriveResult,
    ListQuery,
    RedriveRequest,
    RedriveResult,
    RefundRequest,
    RefundResult,
    SagaDetail,
    SagaPage,
)
from orchestrator.api_tokens import Role

OPENAPI_PATH = "/api/v1/openapi.json"
#: The generated OpenAPI document, served as it is (orchestrator/openapi.py makes it when the app is built).
OPENAPI_DOCUMENT = web.AppKey("openapi_document", dict)


async def serve_openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_DOCUMENT])


@dataclass(frozen=True)
class ApiRoute:
    method: str
    #: aiohttp's form, which is OpenAPI's: /api/v1/sagas/{orderId}
    path: str
    handler: Handler
    operation_id: str
    summary: str
    description: str = ""
    tag: str = "sagas"
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    #: None: a JSON object the document does not describe further.
    response: type[BaseModel] | None = None
    #: Problem statuses besides those every authenticated route may answer (401, 403, 503).
    errors: tuple[int, ...] = ()
    #: Served without a token (the OpenAPI document).
    public: bool = False
    #: The statuses of a successful answer (202: accepted, done later; 200 also: a request repeated).
    ok_statuses: tuple[int, ...] = (200,)

    @property
    def role(self) -> Role | None:
        """The role the bearer auth middleware requires (its default by method; handlers declare none)."""
        return None if self.public else role_for_method(self.method)


ORDER_ID = "the order id, URL-encoded: ORDER#123 is ORDER%23123"

ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        "/api/v1/sagas",
        api_sagas.list_sagas,
        "listSagas",
        "List sagas by filter, newest first, a page at a time, with counts by status",
        "Filters combine with AND; a filter given several times (status, step, error) matches any of its values. "
        "Pages are keyset pages: follow nextCursor until it is null; a saga started meanwhile is neither listed "
        "twice nor skipped.",
        query=ListQuery,
        response=SagaPage,
        errors=(400,),
    ),
    ApiRoute(
        "POST",
        "/api/v1/sagas/redrive",
        api_sagas.bulk_redrive,
        "redriveSagas",
        "Redrive the redrivable sagas a filter matches (dry run by default)",
        "With dryRun (the default) nothing changes: the answer lists the sagas that would be redriven. Otherwise "
        "each is redriven in its own transaction with its own audit entry, newest first, at most limit.",
        body=BulkRedriveRequest,
        response=BulkRedriveResult,
        errors=(400,),
    ),
    ApiRoute(
        "GET",
        "/api/v1/sagas/{orderId}",
        api_sagas.get_saga,
        "getSaga",
        "One saga: state, input, steps with their attempts, and its full history",
        response=SagaDetail,
        errors=(404,),
    ),
    ApiRoute(
        "POST",
        "/api/v1/sagas/{orderId}/redrive",
        api_sagas.redrive_saga,
        "redriveSaga",
        "Restart a FAILED_CRITICAL saga from the step that failed",
        "Runs in the orchestrator on the definition the saga records. The saga's history gets an audit entry "
        "(event RedriveRequested: who, from where, why) in the same transaction. 409 when the saga's status "
        "allows no redrive (the problem's sagaStatus says which).",
        body=RedriveRequest,
        response=RedriveResult,
        errors=(400, 404, 409),
    ),
    ApiRoute(
        "POST",
        "/api/v1/sagas/{orderId}/refund",
        api_sagas.refund_saga,
        "refundSaga",
        "Refund part or all of what an order was charged (customer service's manual refund)",
        "Sends RefundPayment to the payment service with an idempotency key of its own, "
        "{orderId}-manual-refund-{requestKey}: requestKey is the request's Idempotency-Key header (a retry with "
        "the same key refunds once and answers 200 with replayed true) or one the API makes. Absent amount: "
        "all that remains. Never more than was charged: the API checks the saga's records (409 when nothing "
        "was charged, the saga has not ended or is FAILED_CRITICAL, or nothing remains; 422 when the amount is "
        "more than remains), and the payment service checks Stripe's charge (ManualRefundFailed with "
        "RefundExceedsCharge, no money moved). The saga's history gets ManualRefundRequested (who, role, from "
        "where, amount, reason) in the same transaction, then ManualRefundSucceeded or ManualRefundFailed; the "
        "saga's status does not change. 202: asked, the outcome follows in the history.",
        body=RefundRequest,
        response=RefundResult,
        errors=(400, 404, 409, 422),
        ok_statuses=(202, 200),
    ),
    ApiRoute(
        "POST",
        "/api/v1/sagas/{orderId}/cancel",
        api_cancel.cancel_saga,
        "cancelOrder",
        "Stop a RUNNING saga and compensate what may have taken effect, or cancel a CONFIRMED order",
        "A RUNNING saga is stopped where it stands: the step in flight is abandoned (a reply to it later is recorded "
        "as LateReplyIgnored, its timers never fire) and its Catch taken as for the error CancelledByOperator, so "
        "the compensation the definition prescribes after that step runs, that step's own effect included (the "
        "guide's: nothing before ReserveInventory; release the stock from ReserveInventory on; refund and release "
        "from ProcessPayment on; refund, release and void the record at CreateOrderRecord). The saga ends where "
        "that path ends, FAILED or FAILED_COMPENSATED with error CancelledByOperator (FAILED_CRITICAL if a "
        "compensation fails), and publishes its outcome event; its own history gets CancelRequested (who, from "
        "where, why) and ExecutionCancelled. A CONFIRMED order gets the cancellation workflow (as a client's "
        "CancelOrder does): refund in full ({orderId}-cancel-refund), restock, void the record, tell the customer; "
        "its saga is '{orderId} cancel', whose history gets CancelRequested. The answer's cancellation names the "
        "saga to follow. 409, with nothing written, when the saga has ended otherwise than CONFIRMED "
        "(refusal SagaFinished), is already compensating (AlreadyCompensating), is past its point of no return "
        "(PastPointOfNoReturn: its Catch would go on to a success; cancel it once CONFIRMED), or the order already "
        "has a cancellation (CancellationAlreadyRequested); the problem's refusal names which.",
        body=api_cancel.CancelRequest,
        response=api_cancel.CancelResult,
        errors=(400, 404, 409),
    ),
    ApiRoute(
        "GET",
        "/orders/{order_id}",
        api_sagas.get_order,
        "getOrder",
        "One saga in the first API's shape (as orderctl status --json prints it in direct mode)",
        "Kept for the clients of the first API; new clients use GET /api/v1/sagas/{orderId}.",
        tag="legacy",
        errors=(404,),
    ),
    ApiRoute(
        "GET",
        OPENAPI_PATH,
        serve_openapi,
        "getOpenApi",
        "This document (OpenAPI 3.1); no token needed",
        tag="meta",
        public=True,
    ),
)

PUBLIC_PATHS = frozenset(r.path for r in ROUTES if r.public)
