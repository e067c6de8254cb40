"""A local SMS server speaking the Twilio Messages API subset Orderflow uses, for development and tests.

POST /2010-04-01/Accounts/{AccountSid}/Messages.json with HTTP basic auth
(AccountSid:AuthToken) and form fields To, From, Body answers 201 with a
message resource, as Twilio does. Twilio's magic test numbers behave as they
do with Twilio's test credentials: To +15005550001 is an invalid number
(400, code 21211), +15005550009 cannot receive SMS (400, code 21614). Test
routes: GET /_test/messages lists what was accepted; POST /_test/faults
{"status": 429|500|503, "count": N} fails the next N sends.

Run: ``python -m devservers.sms_server --port 8026``.
"""

import argparse
import base64
import uuid
from typing import Any

from aiohttp import web

MAGIC_ERRORS = {
    "+15005550001": (21211, "The 'To' number +15005550001 is not a valid phone number."),
    "+15005550009": (21614, "'To' number is not a valid mobile number"),
}


def make_app(*, account_sid: str = "ACorderflowlocal", auth_token: str = "orderflow-local-token") -> web.Application:
    app = web.Application()
    messages: list[dict[str, Any]] = []
    faults: list[dict[str, Any]] = []
    expected_auth = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()

    def error(status: int, code: int, message: str) -> web.Response:
        return web.json_response(
            {
                "code": code,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
            status=status,
        )

    async def send(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != expected_auth or request.match_info["sid"] != account_sid:
            return error(401, 20003, "Authenticate")
        if faults:
            fault = faults[0]
            fault["count"] -= 1
            if fault["count"] <= 0:
                faults.pop(0)
            return error(fault["status"], 20429 if fault["status"] == 429 else 20500, "injected fault")
        form = await request.post()
        to, sender, body = form.get("To"), form.get("From"), form.get("Body")
        if not to or not body or not sender:
            return error(400, 21604, "A 'To', 'From' and 'Body' are required.")
        if to in MAGIC_ERRORS:
            return error(400, *MAGIC_ERRORS[to])
        message = {
            "sid": "SM" + uuid.uuid4().hex,
            "account_sid": account_sid,
            "to": to,
            "from": sender,
            "body": body,
            "status": "queued",
            "num_segments": str(1 + len(str(body)) // 160),
        }
        messages.append(message)
        return web.json_response(message, status=201)

    async def list_messages(_: web.Request) -> web.Response:
        return web.json_response({"messages": messages})

    async def add_fault(request: web.Request) -> web.Response:
        fault = await request.json()
        faults.append({"status": int(fault["status"]), "count": int(fault.get("count", 1))})
        return web.json_response({"faults": faults})

    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", send)
    app.router.add_get("/_test/messages", list_messages)
    app.router.add_post("/_test/faults", add_fault)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8026)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
