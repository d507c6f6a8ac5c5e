"""``bench cache``: what the content-addressed feature caches hold, and clearing them."""

import argparse
import json
import time

DESCRIPTION = """\
Frozen parts of a model (a locked text tower, a frozen encoder) are computed once and their outputs kept on disk,
keyed by a digest of the weights and settings that computed them and of each input (text, conformer): runs,
seeds and sweep children share them, and a changed weight or input can never read a stale value. The cache lives
in $MOLBRIDGE_CACHE/features (default ~/.cache/molbridge/features) and is kept under $MOLBRIDGE_CACHE_MAX_GB
(default 20): the namespaces used least recently go first.
"""

EPILOG = """\
examples:
  bench cache info
  bench cache info --json
  bench cache clear                         every namespace
  bench cache clear --older-than 30         namespaces unused for 30 days
  bench cache clear 3f9c2a...               one namespace
"""


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "cache",
        help="show or clear the feature caches of frozen towers and encoders",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    info = actions.add_parser(
        "info",
        help="namespaces with their size, last use and what computed them",
        epilog="example:\n  bench cache info",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)
    clear = actions.add_parser(
        "clear",
        help="remove namespaces (all, named ones, or those unused for N days)",
        epilog="examples:\n  bench cache clear\n  bench cache clear --older-than 30",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    clear.add_argument("namespaces", nargs="*", metavar="NAMESPACE", help="only these (default: all)")
    clear.add_argument("--older-than", type=float, metavar="DAYS", help="only namespaces unused for DAYS")
    clear.set_defaults(func=_clear)


def _info(args) -> int:
    from molbridge.core import cache

    spaces = cache.namespaces()
    if args.json:
        print(json.dumps({"root": str(cache.root()), "namespaces": spaces}, indent=2))
        return 0
    total = sum(s["bytes"] for s in spaces)
    print(f"{cache.root()}: {len(spaces)} namespace(s), {total / 2**20:.1f} MiB")
    for space in spaces:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(space["last_used"]))
        what = space["description"].get("what", "")
        print(
            f"  {space['namespace'][:16]}  {space['bytes'] / 2**20:9.1f} MiB  {space['parts']:4d} part(s)  "
            f"used {used}  {what}"
        )
    return 0


def _clear(args) -> int:
    from molbridge.core import cache

    removed = cache.clear(args.namespaces, args.older_than)
    print(f"removed {len(removed)} namespace(s) from {cache.root()}")
    return 0
