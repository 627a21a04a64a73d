"""``pdeserve models list|show``, ``pdeserve eval`` and ``pdeserve serve``: the published
models (through :mod:`modelstore`), their error on a dataset, and the service on a private
Ray instance (or a cluster); no torch."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from modelstore.evaluate import evaluate, has_fields
from modelstore.registry import DEFAULT_REGISTRY, Registry, RegistryError
from modelstore.runner import OnnxSurrogate


def models_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="pdeserve models", description="list or show published models")
    p.add_argument("action", choices=("list", "show"))
    p.add_argument("ref", nargs="?", help="NAME[@VERSION] (show)")
    p.add_argument("--registry", default=DEFAULT_REGISTRY)
    args = p.parse_args(argv)
    registry = Registry(args.registry)
    try:
        if args.action == "list":
            for name in registry.names():
                for version in registry.versions(name):
                    card = registry.card(f"{name}@{version}")
                    overall = card.metrics.get("val_rel_l2/all")
                    shown = f"{overall:.2%}" if overall is not None else "-"
                    print(
                        f"{card.ref:24s} {card.model.class_:14s} {card.model.n_parameters:>12,d} "
                        f"params  n={card.resolution:<4d} val rel L2 {shown}  "
                        f"{card.created:%Y-%m-%d %H:%M}"
                    )
            return 0
        if not args.ref:
            p.error("show needs NAME[@VERSION]")
        print(registry.card(args.ref).model_dump_json(indent=2, by_alias=True))
        return 0
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def eval_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="pdeserve eval", description="run an ONNX model on a dataset")
    p.add_argument("--model", help="NAME[@VERSION] or a model folder (default: the served model)")
    p.add_argument("--data", required=True, help="an HDF5 dataset, ours or the authors' layout")
    p.add_argument("--registry", default=DEFAULT_REGISTRY)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        fields = has_fields(args.data)
        model = OnnxSurrogate.load(args.model, args.registry, fields=fields)
        result = evaluate(model, args.data, args.batch, progress=not args.json)
    except (RegistryError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{model.card.ref}: mean relative L2 {result['mean_relative_l2']:.4%} "
            f"over {result['n']} examples"
        )
        for system, value in result["per_system"].items():
            print(f"  {system:22s} {value:.4%}")
    return 0


def serve_main(argv: Sequence[str]) -> int:
    """``pdeserve serve``: run the application on a private Ray instance or a cluster, until
    SIGINT or SIGTERM; then stop everything it started: in about 3 s when idle, up to
    ``drain_timeout_s`` (3 s) more while requests are in flight (6.3 s measured), at most
    ``embedded.STOP_GRACE_S`` before Ray itself is shut down."""
    import os
    import signal
    import time

    from datagen.ray_instance import stop_signal
    from modelstore.registry import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="pdeserve serve", description="start the solver service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry root (folder or URL)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="default model, name[@version]")
    p.add_argument(
        "--address",
        help="a Ray cluster to deploy on ('auto': the running one, or HOST:PORT); default: a "
        "private Ray instance here, listening on 127.0.0.1 only",
    )
    p.add_argument(
        "--app-name",
        help="with --address: the application's name on the cluster (default: pdeserve); "
        "an application of that name or route that this command did not start is left "
        "alone and refused",
    )
    p.add_argument(
        "--route-prefix", help="with --address: its route (default: / for pdeserve, else /NAME)"
    )
    p.add_argument("--num-cpus", type=int, help="CPUs of the private Ray (default: all)")
    p.add_argument(
        "--verbose", action="store_true", help="print the Ray processes' log lines here too"
    )
    args = p.parse_args(argv)
    if (args.app_name or args.route_prefix) and not args.address:
        p.error("--app-name and --route-prefix need --address (a cluster)")
    app_name = args.app_name or "pdeserve"
    route_prefix = args.route_prefix or ("/" if app_name == "pdeserve" else f"/{app_name}")

    from service import embedded
    from service.settings import ServiceSettings

    registry = args.registry
    if "://" not in registry:
        registry = os.path.abspath(registry)  # replicas may run in another directory
    settings = ServiceSettings(registry=registry, default_model=args.model)
    published = True
    try:
        Registry(registry).resolve(args.model)
    except RegistryError as e:
        published = False
        print(f"warning: {e}; surrogate requests fail until it is published", file=sys.stderr)
    try:
        app = embedded.start(
            settings,
            args.host,
            args.port,
            address=args.address,
            verbose=args.verbose,
            app_name=app_name,
            route_prefix=route_prefix,
            num_cpus=args.num_cpus,
            configure_logging=args.verbose,
            log_to_driver=args.verbose,
        )
        url = app.url
        # The banner last, once the default model answers: nothing of the start-up
        # pushes it off the screen.
        not_ready = embedded.wait_ready(url) if published else None
        if not_ready:
            print(f"warning: not ready yet ({not_ready})", file=sys.stderr)
        print(
            f"pdeserve is serving {args.model} from {registry}\n"
            f"  URL:  {url}{_listening(app)}\n"
            f"  docs: {url}/docs\n"
            f"  metrics: {url}/metrics (Prometheus)\n"
            f"  try:  {try_line(url, registry, args.model)}\n"
            "Ctrl-C stops it." + ("" if args.verbose else " (--verbose shows Ray's log lines)"),
            flush=True,
        )
        while True:
            time.sleep(3600)  # until SIGINT or SIGTERM raises Stopped
    except KeyboardInterrupt as e:  # Stopped, or Ctrl-C before Ray was up
        why = signal.Signals(stop_signal(e)).name
    except (OSError, embedded.ApplicationTaken) as e:  # the port or the name is taken
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        t0 = time.monotonic()
        embedded.stop()
    print(f"pdeserve serve: stopped ({why}) in {time.monotonic() - t0:.1f} s", flush=True)
    return 0


#: Example requests (``-d @examples/NAME.json`` from the repository's root).
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def try_line(url: str, registry: str, model: str) -> str:
    """The banner's suggestion: a curl of the first bundled example the served model
    answers itself (inside its envelope); where none is, the one to try and why it will
    be answered by the exact solver (a fine-tuned model covers a narrow regime)."""
    from service.edge import SOLVE_REQUEST
    from service.envelope import envelope_reasons
    from service.schema import decode_field

    examples = sorted(EXAMPLES.glob("*.json"))
    if not examples:
        return f"POST {url}/solve (docs/serving.md)"
    curl = f"curl -s {url}/solve -H 'Content-Type: application/json' -d @examples/{{}}"
    try:
        card = Registry(registry).card(model)
    except RegistryError:
        return curl.format(examples[0].name)
    why = []
    for path in examples:
        request = SOLVE_REQUEST.validate_json(path.read_bytes())
        source = decode_field(request.source, "source")
        reasons = envelope_reasons(card, request.pde, source, request.unified())
        if not reasons:
            return curl.format(path.name)
        why.append(reasons[0])
    return f"{curl.format(examples[0].name)}  (answered exactly: {why[0]})"


def _listening(app) -> str:
    """Where the servers bind, where the URL does not say it (a cluster's proxies on every
    interface of every node)."""
    host = app.listen.rpartition(":")[0]
    return "" if f"//{host}:" in app.url else f"  (Serve's proxies listen on {app.listen})"
