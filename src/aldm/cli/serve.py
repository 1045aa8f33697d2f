"""``aldm serve``: the web UI of the paper's Appendix A."""

from __future__ import annotations

import os
import sys

from .arguments import port, positive_int


def _cmd_serve(args) -> int:
    import uvicorn

    from ..serve.app import create_app

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"aldm: serving on {args.host}: anyone who can reach this address can generate and download; "
              "requests must name it (or a --allow-host name) in their Host header", file=sys.stderr)
    app = create_app(args.model, out=args.out, data=args.data, max_pending=args.max_queue, device=args.device,
                     allowed_hosts=(args.host, *(args.allow_host or ())))
    print(f"aldm: http://{args.host}:{args.port}/  (jobs and samples in {os.path.abspath(args.out)})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def register(commands) -> None:
    """Add ``aldm serve`` to ``commands`` (an argparse sub-parsers object)."""
    serve = commands.add_parser("serve", help="the web UI: on-demand generation with a 3-plane viewer")
    serve.add_argument("--model", action="append", required=True,
                       help="a finished LDM, few-shot or baseline run (repeat for several, e.g. GBM and PDGM)")
    serve.add_argument("--data", action="append", default=None,
                       help="prepared cache for masks and real volumes (default: each run's own; one for all "
                            "or one per --model)")
    serve.add_argument("--out", default="aldm-serve", help="jobs and samples, kept across restarts")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=port, default=8000)
    serve.add_argument("--allow-host", action="append", default=None, metavar="NAME",
                       help="also answer requests for this Host name (a reverse proxy's; repeatable); others get 400 "
                            "(DNS-rebinding guard)")
    serve.add_argument("--max-queue", type=positive_int, default=4, help="jobs queued or running at most")
    serve.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    serve.set_defaults(func=_cmd_serve)
