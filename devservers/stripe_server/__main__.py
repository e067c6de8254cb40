"""``python -m devservers.stripe_server``: run the simulator from the shell.

Options default from the environment (STRIPE_SIM_HOST, STRIPE_SIM_PORT,
STRIPE_SIM_WEBHOOK_URL, STRIPE_SIM_WEBHOOK_SECRET) so docker-compose setups
need no command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from .runner import serve_forever


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI options, with environment fallbacks."""
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m devservers.stripe_server", description=__doc__)
    parser.add_argument("--host", default=env.get("STRIPE_SIM_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("STRIPE_SIM_PORT", "12111")))
    parser.add_argument(
        "--webhook-url",
        action="append",
        default=None,
        help="deliver events here (repeatable); env STRIPE_SIM_WEBHOOK_URL, comma-separated",
    )
    parser.add_argument(
        "--webhook-secret",
        default=env.get("STRIPE_SIM_WEBHOOK_SECRET"),
        help="signing secret (whsec_...); generated and logged when omitted",
    )
    parser.add_argument(
        "--webhook-events",
        default=env.get("STRIPE_SIM_WEBHOOK_EVENTS", "*"),
        help="event types the endpoints subscribe to, comma-separated, as a Stripe endpoint's enabled_events "
        "(default *: every event); env STRIPE_SIM_WEBHOOK_EVENTS",
    )
    parser.add_argument("--api-version", default=None, help="api_version stamped on events")
    parser.add_argument("--log-level", default=env.get("STRIPE_SIM_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if args.webhook_url is None:
        args.webhook_url = [u for u in env.get("STRIPE_SIM_WEBHOOK_URL", "").split(",") if u.strip()]
    return args


def main(argv: list[str] | None = None) -> None:
    """Parse options and serve until interrupted."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    endpoints = [(url.strip(), args.webhook_secret) for url in args.webhook_url]
    events = [e.strip() for e in args.webhook_events.split(",") if e.strip()] or ["*"]
    try:
        asyncio.run(
            serve_forever(
                args.host, args.port, webhook_endpoints=endpoints, webhook_events=events, api_version=args.api_version
            )
        )
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
