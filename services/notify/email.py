"""Email through aiosmtplib: the messages, and the names of the errors sending them (smtp_pool sends)."""

from email.message import EmailMessage

import aiosmtplib

from contracts.notify import NotifyCustomer
from plumbing.errors import SERVICE_THROTTLED, BusinessError, NamedError, TransientError
from services.notify.smtp_pool import SmtpPool, UnansweredMessage

SERVICE_CONNECTION = "Service.ConnectionError"


class NotificationError(BusinessError):
    error_name = "NotificationError"


class EmailOutcomeUnknown(Exception):
    """The server took the whole message and its answer was lost: it may have accepted the mail. Not a named
    error on purpose: the handler records a named error's channel failed (to be sent again), and leaves a crashed
    one 'sending', an unknown outcome that is never sent again (a duplicate email is the worse fault)."""


def sms_text(command: NotifyCustomer) -> str:
    total = f"{command.amount:.2f} {command.currency.upper()}"
    if command.kind == "cancellation":
        return f"Order {command.orderId} cancelled: {total} refunded"
    return f"Order {command.orderId} confirmed: {total}"


def render(command: NotifyCustomer, sender: str) -> EmailMessage:
    """The confirmation email, or the cancellation notice (``kind``), each with the order's lines."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = command.customer.email
    if command.kind == "cancellation":
        return _cancellation(message, command)
    message["Subject"] = f"Order {command.orderId} confirmed"
    lines = "\n".join(
        f"  {line.quantity} x {line.name} ({line.productId}) {line.lineTotal:.2f} {command.currency.upper()}"
        for line in command.lines
    )
    message.set_content(
        f"Thank you for your order {command.orderId}.\n\n{lines}\n\n"
        f"Total charged: {command.amount:.2f} {command.currency.upper()}\n"
    )
    return message


def _cancellation(message: EmailMessage, command: NotifyCustomer) -> EmailMessage:
    message["Subject"] = f"Order {command.orderId} cancelled"
    lines = "\n".join(f"  {line.quantity} x {line.name} ({line.productId})" for line in command.lines)
    message.set_content(
        f"Your order {command.orderId} is cancelled.\n\n{lines}\n\n"
        f"Refunded: {command.amount:.2f} {command.currency.upper()} to the card you paid with.\n"
    )
    return message


async def send(message: EmailMessage, *, pool: SmtpPool) -> None:
    """Send one message on one of the pool's persistent connections, its errors named as with a connection per
    email: a refusal by its code (classify_smtp), an unreachable or disconnected server as a connection error,
    but a connection lost after the end of DATA as EmailOutcomeUnknown."""
    try:
        await pool.send(message)
    except UnansweredMessage as exc:
        raise EmailOutcomeUnknown(
            f"the SMTP server may have accepted the mail ({message['Subject']}): {exc.__cause__!r}"
        ) from exc
    except aiosmtplib.SMTPResponseException as exc:
        raise classify_smtp(exc.code, exc.message) from exc
    except (
        aiosmtplib.SMTPConnectError,
        aiosmtplib.SMTPServerDisconnected,
        aiosmtplib.SMTPTimeoutError,
        OSError,
    ) as exc:
        raise TransientError(f"SMTP server unreachable: {exc}", name=SERVICE_CONNECTION) from exc
    except aiosmtplib.SMTPException as exc:
        raise NotificationError(f"SMTP error: {exc}") from exc


def classify_smtp(code: int, text: str) -> NamedError:
    # 421 (service not available) and 450/451/452 (try again later) are the SMTP throttles.
    if code in (421, 450, 451, 452):
        return TransientError(f"SMTP {code}: {text}", name=SERVICE_THROTTLED)
    return NotificationError(f"SMTP {code}: {text}")
