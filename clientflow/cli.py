"""The ``clientflow`` command line.

    clientflow check-mapping FILE...   validate mapping files: the errors name file, line and field
    clientflow mapping-schema          print the mapping files' JSON Schema (include/mappings/mapping.schema.json)
    clientflow manifest-schema         print the manifest's JSON Schema (docs/manifest.schema.json)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _check_mapping(args: argparse.Namespace) -> int:
    from clientflow.mapping import MappingError, load_mapping

    failed = 0
    for name in args.files:
        path = Path(name)
        try:
            mapping = load_mapping(path)
        except MappingError as exc:
            failed += 1
            for problem in exc.problems:
                print(problem, file=sys.stderr)
        except OSError as exc:
            failed += 1
            print(f"{path}: cannot read ({exc.strerror})", file=sys.stderr)
        else:
            tables = ", ".join(f"{t} -> {s.entity}" for t, s in mapping.tables.items())
            print(f"{path}: ok: client {mapping.client}: {tables}")
    return 1 if failed else 0


def mapping_schema() -> str:
    from clientflow.mapping import ClientMapping

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$id": "https://clientflow.example/schemas/mapping.schema.json",
              **ClientMapping.model_json_schema()}
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def _mapping_schema(_args: argparse.Namespace) -> int:
    sys.stdout.write(mapping_schema())
    return 0


def _manifest_schema(_args: argparse.Namespace) -> int:
    from clientflow.arrival.manifest import json_schema

    sys.stdout.write(json_schema())
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="clientflow", description="Operate the clientflow pipeline.")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser("check-mapping", help="validate client mapping files")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(run=_check_mapping)
    commands.add_parser("mapping-schema", help="print the mapping files' JSON Schema").set_defaults(run=_mapping_schema)
    commands.add_parser("manifest-schema", help="print the manifest's JSON Schema").set_defaults(run=_manifest_schema)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
