"""Run the City OS stand-ins for a demo until interrupted::

    python -m hw.cityos --ngsi-ld 127.0.0.1:1026 --ngsi-v2 127.0.0.1:1027 \\
        [--oauth 127.0.0.1:1029 --client kakehashi:secret --token-lifetime 3600] [--cert server.crt --key server.key] \\
        [--context https://example.org/ctx.jsonld ...]

Prints one line per listener (its URL) and, on Ctrl-C, how many entities each broker holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
from collections.abc import Sequence

from hw.cityos.ngsi_ld import NgsiLdBroker
from hw.cityos.ngsi_v2 import OrionBroker
from hw.cityos.oauth import TOKEN_PATH, TokenAuthority
from hw.cityos.server import StandInServer


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hw.cityos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ngsi-ld", type=_address, help="serve the NGSI-LD broker stand-in on HOST:PORT")
    parser.add_argument("--ngsi-v2", type=_address, help="serve the Orion (NGSI v2) stand-in on HOST:PORT")
    parser.add_argument(
        "--oauth", type=_address, help="serve the token endpoint on HOST:PORT; brokers then need tokens"
    )
    parser.add_argument("--client", action="append", default=[], help="an OAuth client ID:SECRET (repeatable)")
    parser.add_argument("--token-lifetime", type=float, default=3600.0, help="token lifetime in seconds")
    parser.add_argument("--context", action="append", default=[], help="an @context URL the NGSI-LD broker accepts")
    parser.add_argument("--cert", help="serve HTTPS with this certificate (chain) file")
    parser.add_argument("--key", help="... and this key file")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    tls = None
    if args.cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert, args.key)
    authority = None
    servers: list[tuple[str, StandInServer]] = []
    if args.oauth:
        clients = dict(c.split(":", 1) for c in args.client)
        authority = TokenAuthority(clients, lifetime_s=args.token_lifetime)
        servers.append(
            ("oauth token endpoint", StandInServer(authority.app(), host=args.oauth[0], port=args.oauth[1], tls=tls))
        )
    ld = NgsiLdBroker(authority=authority, allowed_contexts=set(args.context))
    v2 = OrionBroker(authority=authority)
    if args.ngsi_ld:
        servers.append(("ngsi-ld broker", StandInServer(ld.app(), host=args.ngsi_ld[0], port=args.ngsi_ld[1], tls=tls)))
    if args.ngsi_v2:
        servers.append(("ngsi-v2 broker", StandInServer(v2.app(), host=args.ngsi_v2[0], port=args.ngsi_v2[1], tls=tls)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        for name, server in servers:
            await stack.enter_async_context(server)
            suffix = TOKEN_PATH if name.startswith("oauth") else ""
            print(f"{name}: {server.url}{suffix}", flush=True)
        await stop.wait()
    print(
        f"ngsi-ld entities: {sum(len(t) for t in ld.tenants.values())}, ngsi-v2 entities: "
        f"{sum(len(s) for s in v2.scopes.values())}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if not (args.ngsi_ld or args.ngsi_v2):
        print("nothing to serve: give --ngsi-ld and/or --ngsi-v2", file=sys.stderr)
        return 2
    if bool(args.cert) != bool(args.key):
        print("--cert and --key go together", file=sys.stderr)
        return 2
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
