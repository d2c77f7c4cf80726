"""`gyges serve`: the OpenAI-compatible server over a cluster that reshapes itself (vLLM's flags).

SIGINT/SIGTERM: stop accepting (new requests get 503), let running requests finish for up to
--shutdown-timeout seconds, end the rest with an error, stop every worker, exit. A second
signal closes the HTTP server at once; the workers are stopped either way.
"""
import argparse
import dataclasses
import signal
import threading
from pathlib import Path

import uvicorn

from gyges.cluster.args import add_cluster_args, cluster_config
from gyges.cluster.config import parse_layout
from gyges.policy import POLICIES


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve an OpenAI-compatible API (completions, chat, metrics)")
    add_cluster_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--policy", default="gyges", choices=list(POLICIES),
                   help="gyges: merge and split instances with the traffic; static: keep the start-up layout")
    p.add_argument("--static-layout", default=None,
                   help="with --policy static: instance sizes in device order, e.g. 2,1,1 (default: all --tp)")
    p.add_argument("--api-key", default=None, help="every /v1 call then needs 'Authorization: Bearer KEY'")
    p.add_argument("--served-model-name", default=None, help="the model's name in the API (default: MODEL)")
    p.add_argument("--max-model-len", type=int, default=None, help="context limit (default: the model's)")
    p.add_argument("--chat-template", default=None, help="a Jinja file replacing the tokenizer's chat template")
    p.add_argument("--max-queued-requests", type=int, default=1024,
                   help="waiting requests beyond this get 503 with Retry-After")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGINT/SIGTERM, seconds running requests may take to finish")
    p.add_argument("--output-estimate", type=int, default=1024,
                   help="output tokens the policy plans KV for when a request sets no max_tokens")
    p.add_argument("--home-layout", default=None,
                   help="with --policy gyges: pin the home layout (instance sizes, e.g. 2,1,1) instead of planning it "
                        "from the traffic; the rest of the policy (forced merges, routing) stays on")
    p.add_argument("--router", default="latency", choices=["latency", "freeness"],
                   help="latency: each request goes where its predicted time to first token is short (queued "
                        "prefill work); freeness: where there is the most KV room per request")
    p.add_argument("--min-dwell", type=float, default=10.0,
                   help="seconds a merged instance serves before the policy may split it (against thrashing)")
    p.add_argument("--cost-profile", default=None,
                   help="hardware profile JSON the policy prices steps with (from `gyges simulate --fit`); "
                        "default: the one fitted on the CPU and shipped in gyges/data")
    p.add_argument("--enable-operator-endpoints", action="store_true",
                   help="allow POST /v1/cluster/merge and /split without --api-key")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=serve)
    return p


def serve(args) -> int:
    from gyges.cluster.serving import ServeConfig, ServingCluster
    from gyges.model.loader import resolve_model
    from gyges.server.app import ServerSettings, build_app
    if args.static_layout and args.policy != "static":
        raise ValueError("--static-layout needs --policy static")
    if args.home_layout and args.policy != "gyges":
        raise ValueError("--home-layout needs --policy gyges")
    home = tuple(parse_layout(args.home_layout, args.devices, args.max_tp or args.devices & -args.devices)) \
        if args.home_layout else None
    cfg = dataclasses.replace(cluster_config(args), layout=args.static_layout)
    serve_cfg = ServeConfig(policy=args.policy, output_estimate=args.output_estimate,
                            max_queued_requests=args.max_queued_requests, max_model_len=args.max_model_len,
                            min_dwell_s=args.min_dwell, cost_profile=args.cost_profile, home_layout=home,
                            router=args.router)
    template = Path(args.chat_template).read_text() if args.chat_template else None
    name = args.served_model_name or args.model or resolve_model(None).stem
    # Ctrl-C signals the whole process group: the workers and the loop's thread inherit a block on
    # the stop signals, so only this thread gets them, and drains, instead of the workers dying
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        cluster = ServingCluster(cfg, serve_cfg)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    settings = ServerSettings(name, args.api_key, args.enable_operator_endpoints, template)
    server = _Server(uvicorn.Config(build_app(cluster, settings), host=args.host, port=args.port,
                                    log_level=args.log_level, timeout_graceful_shutdown=5),
                     cluster, args.shutdown_timeout)
    try:
        layout = ", ".join(f"TP{i['tp']} {i['devices']}" for i in cluster.cluster_info()["instances"])
        print(f"gyges: serving {name!r} on {args.devices} device(s): {layout}; policy {args.policy}\n"
              f"gyges: http://{args.host}:{args.port}/v1", flush=True)
        server.run()
    finally:
        server.stop_cluster()
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, but the first signal drains the cluster before the server stops."""

    def __init__(self, config, cluster, timeout: float):
        super().__init__(config)
        self.cluster, self.timeout = cluster, timeout
        self._drain: threading.Thread | None = None
        self._lock = threading.Lock()

    def handle_exit(self, sig, frame):
        with self._lock:
            first = self._drain is None
            if first:
                print(f"gyges: stopping: running requests have {self.timeout:g} s to finish", flush=True)
                self._drain = threading.Thread(target=self._drain_then_exit, name="gyges-drain", daemon=True)
                self._drain.start()
        if not first:
            super().handle_exit(sig, frame)

    def _drain_then_exit(self):
        self.cluster.shutdown(self.timeout)
        self.should_exit = True

    def stop_cluster(self):
        """After the server stopped (or failed to start): make sure the cluster and its workers are gone."""
        with self._lock:
            drain = self._drain
            if drain is None:
                self._drain = threading.current_thread()
        if drain is None:
            self.cluster.shutdown(0)
        else:
            drain.join()
