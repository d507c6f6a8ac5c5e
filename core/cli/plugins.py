"""``bench plugins``: every loaded plugin and the components it registered, by kind."""

import argparse
import json

from molbridge.core.plugins import default_plugins
from molbridge.core.registry import KINDS


def add_parser(sub):
    parser = sub.add_parser(
        "plugins",
        help="list installed plugins and their components",
        description="List every component by kind (encoder, projector, llm, task) with the plugin and "
        "distribution that provides it, then plugins that failed to load and why.\n\n"
        "Third-party plugins register through the 'molbridge' entry-point group; set "
        "MOLBRIDGE_NO_EXTERNAL_PLUGINS=1 to load the built-ins only. --check runs the contract checks of "
        "molbridge.core.testing on every component with its default settings (exit 1 if one fails).",
        epilog="examples:\n  bench plugins\n  bench plugins --json | jq '.components.encoder[].name'\n"
        "  bench plugins --check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--check", action="store_true", help="run the contract checks on every component")
    parser.set_defaults(func=show_plugins)


def _listing() -> dict:
    loaded = default_plugins()
    components = {
        kind: [
            {
                "name": c.name,
                "description": c.description,
                "plugin": c.plugin,
                "distribution": c.distribution,
                "version": c.version,
            }
            for c in (loaded.registry.get(kind, n) for n in loaded.registry.names(kind))
        ]
        for kind in KINDS
    }
    plugins = [
        {
            "name": p.name,
            "module": p.module,
            "distribution": p.distribution,
            "version": p.version,
            "builtin": p.builtin,
            "hook_api": p.hook_api,
            "error": p.error,
            "warning": p.warning,
            "components": [f"{kind}:{name}" for kind, name in p.components],
        }
        for p in loaded.plugins
    ]
    return {"components": components, "plugins": plugins}


def show_plugins(args) -> int:
    if args.check:
        return check_plugins()
    listing = _listing()
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for kind in KINDS:
        entries = listing["components"][kind]
        print(f"{kind}s:" if entries else f"{kind}s: (none)")
        for c in entries:
            origin = f"{c['distribution']} {c['version']}" if c["distribution"] else c["plugin"]
            print(f"  {c['name']:<14} {c['description']}  [{origin}]")
    failed = [p for p in listing["plugins"] if p["error"]]
    for p in failed:
        print(f"failed to load: {p['name']} ({p['distribution'] or 'no distribution'}): {p['error']}")
    return 0


def check_plugins() -> int:
    """``bench plugins --check``: every component through its contract checks, one line each."""
    from molbridge.core.testing import check_component

    registry, failed = default_plugins().registry, 0
    for kind in KINDS:
        for name in registry.names(kind):
            component = registry.get(kind, name)
            origin = f"{component.distribution} {component.version}" if component.distribution else component.plugin
            problem = check_component(registry, kind, name)
            failed += bool(problem and not problem.startswith("skipped"))
            print(f"{kind:<9} {name:<14} [{origin}] {problem or 'ok'}", flush=True)
    print(f"{failed} component(s) failed their contract checks" if failed else "every component passed")
    return 1 if failed else 0
