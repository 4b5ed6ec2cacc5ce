"""The ``clientflow`` command line.

    clientflow manifest-schema      print the manifest's JSON Schema (docs/manifest.schema.json)
"""

from __future__ import annotations

import argparse
import sys


def _manifest_schema(_args: argparse.Namespace) -> int:
    from clientflow.arrival.manifest import json_schema

    sys.stdout.write(json_schema())
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="clientflow", description="Operate the clientflow pipeline.")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    schema = commands.add_parser("manifest-schema", help="print the manifest's JSON Schema")
    schema.set_defaults(run=_manifest_schema)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
