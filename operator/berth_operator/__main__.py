"""`python -m berth_operator [run | crd | rbac | rbac-rules]`: run the operator, or print
its manifests (rbac-rules: the file the chart renders its RBAC from)."""

from __future__ import annotations

import argparse
import sys

from service.core.config import ConfigError

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="berth-operator", description="The berth tenant operator (kopf)."
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the operator (default; settings: BERTH_OPERATOR__*)")
    commands.add_parser("crd", help="print the tenants.berth.dev CustomResourceDefinition")
    rbac = commands.add_parser("rbac", help="print the Roles and bindings the operator needs")
    rbac.add_argument("--namespace", required=True, help="the operator's own namespace")
    rbac.add_argument("--service-account", default="berth-operator")
    rbac.add_argument(
        "--watch", default="", help="comma-separated namespaces it watches (empty: all)"
    )
    commands.add_parser(
        "rbac-rules", help="print charts/berth/files/operator-rbac.yaml (the chart's RBAC source)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "crd":
        from berth_operator.crd import render_yaml

        sys.stdout.write(render_yaml())
        return 0
    if args.command == "rbac":
        from berth_operator import rbac

        watched = [name.strip() for name in args.watch.split(",") if name.strip()]
        sys.stdout.write(rbac.render_yaml(args.namespace, args.service_account, watched))
        return 0
    if args.command == "rbac-rules":
        from berth_operator import rbac

        sys.stdout.write(rbac.render_chart_rules_yaml())
        return 0
    from berth_operator.app import main_run
    from berth_operator.config import load_operator_settings

    try:
        settings = load_operator_settings()
    except ConfigError as exc:
        print(f"berth-operator: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return main_run(settings)


if __name__ == "__main__":
    sys.exit(main())
