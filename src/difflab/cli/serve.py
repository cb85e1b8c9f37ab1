"""``difflab serve``: a local web page to sample from and edit with a run (docs/serve.md)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a local web page to sample and edit with a run", description=(
        "Serve a page for RUN: choose sampler, steps, seed, number of samples (and label / prompt and guidance "
        "for conditional runs), watch the x0 estimates step by step, download the PNG and the .npz, and edit "
        "images (inpainting, SDEdit, super-resolution / colorization runs). Listens on 127.0.0.1 only unless "
        "--host says otherwise."))
    p.add_argument("--run", required=True, type=Path, metavar="RUN_DIR")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--workers", type=int, default=2, help="jobs sampled at the same time (default 2)")
    p.add_argument("--max-queued", type=int, default=8, help="jobs waiting beyond those (default 8; more get HTTP 503)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to NAME (a host name of this machine; repeatable). Requests "
                        "whose Host header is not an address the server listens on are refused (DNS rebinding)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="print the traceback of an unexpected error (also DIFFLAB_DEBUG=1)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..serve import Server, Service

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must lie in 0..65535, got {args.port}")
    service = Service(args.run, workers=args.workers, max_queued=args.max_queued)
    try:
        debug = bool(getattr(args, "debug", False)) or os.environ.get("DIFFLAB_DEBUG", "") not in ("", "0")
        server = Server(service, args.host, args.port, verbose=args.verbose, debug=debug, allow_hosts=args.allow_host)
    except OSError as e:
        service.close()
        raise UserError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"difflab: warning: listening on {args.host}: other machines can reach this page")
    if server.allowed_hosts is None:
        print("difflab: warning: any Host name is answered on a wildcard address; name this machine's with "
              "--allow-host to refuse the others")
    print(f"serving {args.run} on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        service.close()
        server.server_close()
    print("stopped", flush=True)
    return 0
