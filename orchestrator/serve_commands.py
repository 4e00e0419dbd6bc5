"""`orchestrate serve`: AIB's REST API over HTTPS (FastAPI on uvicorn), and `orchestrate token
create|list|revoke`: the bearer tokens it accepts. The server serves the same templates, runs
and outputs as the CLI; a run it starts is its own `orchestrate run` process."""
from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.config import Config
from orchestrator.errors import UsageError

DEFAULT_LISTEN = "127.0.0.1:8443"
DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
DEFAULT_RESOURCE_GROUP = "orchestrator"


def add_parsers(sub: Any) -> None:
    text = "serve AIB's REST API over HTTPS (Microsoft's SDK, az rest and ARM automation drive this host)"
    serve = sub.add_parser("serve", help=text, description=text + ". Bearer tokens: `orchestrate token create`.")
    serve.set_defaults(handler=cmd_serve)
    serve.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                       help=f"address to listen on (default {DEFAULT_LISTEN}; port 0 picks a free one)")
    serve.add_argument("--cert", metavar="FILE", help="the organisation's server certificate (PEM; with --key); "
                       "default: one made under the data home's tls/ on the first start")
    serve.add_argument("--key", metavar="FILE", help="the private key of --cert (PEM)")
    serve.add_argument("--subscription", default=DEFAULT_SUBSCRIPTION,
                       help="the subscription id under which templates the CLI created appear")
    serve.add_argument("--resource-group", default=DEFAULT_RESOURCE_GROUP,
                       help="the resource group under which templates the CLI created appear")
    text = "bearer tokens of the REST API: create, list, revoke"
    token = sub.add_parser("token", help=text, description=text)
    token.set_defaults(handler=cmd_token)
    actions = token.add_subparsers(dest="token_command", metavar="ACTION", parser_class=sub._parser_class)
    actions.required = True
    create = actions.add_parser("create", help="make a token (printed once; only its hash is kept)")
    create.add_argument("name")
    create.add_argument("--role", choices=("reader", "contributor"), required=True)
    create.add_argument("--scope", required=True, metavar="/subscriptions/S[/resourceGroups/RG]")
    actions.add_parser("list", help="list tokens (names, roles, scopes; never the tokens)")
    revoke = actions.add_parser("revoke", help="revoke a token: it is refused from now on")
    revoke.add_argument("name")
    for action in actions.choices.values():
        action.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_token(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.api.resources import Scope
    from orchestrator.commands import emit
    from orchestrator.effects import api_state
    from orchestrator.run_commands import store

    state = store(config)
    if args.token_command == "create":
        if not args.name or len(args.name) > 64:
            raise UsageError(f"{args.name!r} is not a token name", hint="1-64 characters")
        if Scope.parse(args.scope) is None:
            raise UsageError(f"{args.scope!r} is not a scope",
                             hint="/subscriptions/SUBSCRIPTION or /subscriptions/SUBSCRIPTION/resourceGroups/GROUP")
        token = api_state.create_token(state, args.name, args.role, args.scope.rstrip("/"))
        if token is None:
            raise UsageError(f"a token named {args.name!r} exists", hint="revoke it, or use another name")
        if args.json:
            emit({"ok": True, "name": args.name, "role": args.role, "scope": args.scope, "token": token})
        else:
            print(token)
            print(f"token {args.name} ({args.role} of {args.scope}): shown this once, keep it secret", file=sys.stderr)
        return 0
    if args.token_command == "list":
        listed = api_state.tokens(state)
        if args.json:
            emit({"tokens": [{"name": t.name, "role": t.role, "scope": t.scope, "createdTime": _stamp(t.created_at),
                              "revokedTime": _stamp(t.revoked_at) if t.revoked_at else None} for t in listed]})
        for t in [] if args.json else listed:
            print(f"{t.name:24} {t.role:11} {t.scope}" + (" (revoked)" if t.revoked_at else ""))
        return 0
    if not api_state.revoke_token(state, args.name):
        raise UsageError(f"no token named {args.name!r}", hint="`orchestrate token list` shows them")
    if args.json:
        emit({"ok": True, "name": args.name, "revoked": True})
    else:
        print(f"token {args.name} revoked")
    return 0


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    import uvicorn

    from orchestrator.api.app import create_app
    from orchestrator.effects.tls import TlsFiles, ensure_self_signed

    host, _, port_text = args.listen.rpartition(":")
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"--listen {args.listen!r} is not HOST:PORT", hint=f"for example {DEFAULT_LISTEN}")
    if bool(args.cert) != bool(args.key):
        raise UsageError("--cert and --key go together", hint="give both, or neither (a certificate is made)")
    if args.cert:
        for path in (args.cert, args.key):
            if not Path(path).is_file():
                raise UsageError(f"{path} is not a file", hint="give the PEM files of the server's certificate")
        tls = TlsFiles(Path(args.cert), Path(args.key), None)
    else:
        tls = ensure_self_signed(config.ensure().home / "tls")
    sock = _listen(host.strip("[]"), int(port_text))  # a clear error here, not uvicorn's exit
    app = create_app(config, args.subscription, args.resource_group)
    settings = uvicorn.Config(app, host=host.strip("[]"), port=int(port_text), ssl_certfile=str(tls.cert),
                              ssl_keyfile=str(tls.key), log_level="warning", access_log=False, server_header=False,
                              timeout_keep_alive=5, timeout_graceful_shutdown=5, limit_concurrency=64,
                              h11_max_incomplete_event_size=64 * 1024)
    _Server(settings, tls).run(sock)
    return 0


def _listen(host: str, port: int) -> socket.socket:
    from orchestrator.errors import EnvironmentProblem

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: uvicorn writes a response's head and body apart, and
        # with Nagle the body waits for the client's delayed ACK (40 ms a request)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise EnvironmentProblem(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                                 hint="another server may listen there, or the address is not this host's: "
                                      "choose another --listen HOST:PORT") from None
    return sock


class _Server:
    """uvicorn's server, saying where it listens (the bound port, when 0 was asked) once it does."""

    def __init__(self, settings: Any, tls: Any) -> None:
        import uvicorn

        class Announcing(uvicorn.Server):
            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets)
                for server in self.servers:
                    for sock in server.sockets:
                        address = sock.getsockname()
                        shown = f"[{address[0]}]" if ":" in address[0] else address[0]
                        print(f"listening on https://{shown}:{address[1]}", flush=True)
                if tls.ca is not None:
                    print(f"clients trust the CA in {tls.ca}" + (" (made now)" if tls.made else ""), flush=True)

        self.server = Announcing(settings)

    def run(self, sock: socket.socket) -> None:
        self.server.run(sockets=[sock])
