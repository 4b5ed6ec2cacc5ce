"""The ``clientflow`` command line.

    clientflow check-mapping FILE...   validate mapping files: the errors name file, line and field
    clientflow rejects CLIENT [--batch ID]      list the values a client's batches refused (never the values)
    clientflow accept ID --by NAME --reason WHY [--gate G]   accept a batch a gate stopped
    clientflow reoffer ID --by NAME --reason WHY             let a batch run again after a mapping fix
    clientflow snapshots CLIENT        per client table: the newest file's mode, the last full snapshot
                                       and its state, the incremental batches promoted since
    clientflow mapping-schema          print the mapping files' JSON Schema (include/mappings/mapping.schema.json)
    clientflow manifest-schema         print the manifest's JSON Schema (docs/manifest.schema.json)
    clientflow bucket-events           create the bucket if missing, each client's SQS queue, and the
                                       bucket's manifest notifications to them (idempotent)
    clientflow metrics-server [--port P]   serve Prometheus metrics read from the ledger (read-only role)
    clientflow reconcile CLIENT [--date D] [--skip-data]   every batch in the bucket against raw, rejects,
                                       dummy production and production; exit 1 on any difference
    clientflow upload-policy CLIENT [--bucket B]   the IAM policy of the client's upload credentials
    clientflow upload-key CLIENT create --out FILE | list | retire KEY_ID   the client's upload user
                                       and its access keys: onboarding and rotation
    clientflow status                  per client: last promoted batch and its age, batches by state, incidents
    clientflow batches CLIENT          the client's batches, newest first
    clientflow trace JOB_ID            a batch (by ingestion id or a file's job id): files, events, stages, rows
    clientflow reprocess CLIENT DATE [--run-id R]   run a FAILED batch again, once its cause is fixed
    clientflow restore CLIENT --by NAME --reason WHY [--since D]   rebuild production's rows of the
                                       client from the bucket's files: sync dummy production from
                                       production, then replay the promoted batches oldest first
    clientflow offboard CLIENT [--dry-run] [--timeout S]   retire the client's upload keys, wait
                                       until no batch or run of it is in flight, then pause its DAG
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


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


def _bucket_events(_args: argparse.Namespace) -> int:
    from clientflow.arrival import events
    from clientflow.config import PipelineSettings
    from clientflow.mapping import MappingError, load_mapping, mapping_files

    s3_settings = PipelineSettings.from_settings_file().s3
    s3, sqs = s3_settings.client(), s3_settings.client("sqs")
    if s3_settings.bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=s3_settings.bucket)
    clients = []
    for path in mapping_files():
        try:
            clients.append(load_mapping(path).client)
        except MappingError as exc:
            print(f"{path.name}: skipped, the mapping cannot be used ({exc.problems[0] if exc.problems else exc})",
                  file=sys.stderr)
    for client, url in events.configure(s3, sqs, s3_settings.bucket, clients).items():
        print(f"{client}: s3://{s3_settings.bucket}/client={client}/**/manifest.json -> {url}")
    return 0


def _staging() -> Any:
    import psycopg

    from clientflow.config import PipelineSettings

    return psycopg.connect(PipelineSettings.from_settings_file().staging.conninfo())


def _rerun_hint(conn: Any, ingestion_id: str) -> str:
    from clientflow.operations import ledger

    client, day, run_id = ledger.batch_of(conn, ingestion_id) or ("?", "?", "?")
    return (f"run it again: airflow dags trigger client_{client} --conf "
            f"'{{\"batch_date\": \"{day}\", \"run_id\": \"{run_id}\"}}'")


def _accept(args: argparse.Namespace) -> int:
    from clientflow.operations import ledger
    from clientflow.validation.gates import ACCEPTABLE

    gates = args.gate or ["*"]
    unknown = [g for g in gates if g != "*" and g not in ACCEPTABLE]
    if unknown:
        print(f"unknown gate(s) {unknown}; the gates that can be accepted: {', '.join(ACCEPTABLE)}", file=sys.stderr)
        return 2
    with _staging() as conn:
        try:
            ledger.accept(conn, args.ingestion_id, args.by, args.reason, gates)
        except ledger.LedgerActionRefused as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"accepted {args.ingestion_id} ({', '.join(gates)}); {_rerun_hint(conn, args.ingestion_id)}")
    return 0


def _reoffer(args: argparse.Namespace) -> int:
    from clientflow.operations import ledger

    with _staging() as conn:
        try:
            ledger.reoffer(conn, args.ingestion_id, args.by, args.reason)
        except ledger.LedgerActionRefused as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"re-offered {args.ingestion_id}; {_rerun_hint(conn, args.ingestion_id)}")
    return 0


def _rejects(args: argparse.Namespace) -> int:
    query = ("select r.ingestion_id, b.batch_date, r.table_name, r.source_row, r.source_key, r.column_name, r.rule, "
             "r.reason from pipeline.rejects r join pipeline.batches b using (ingestion_id) where r.client_name = %s"
             + (" and r.ingestion_id = %s" if args.batch else "") + " order by b.batch_date desc, r.table_name, "
             "r.source_row, r.column_name limit %s")
    params = (args.client, *([args.batch] if args.batch else []), args.limit)
    with _staging() as conn:
        rows = conn.execute(query, params).fetchall()
    print("batch                             date        table            row  key          column           rule")
    for ingestion_id, day, table, row, key, column, rule, _reason in rows:
        print(f"{ingestion_id}  {day}  {table:<15} {row:>5}  {str(key):<12} {column:<16} {rule}")
    print(f"{len(rows)} refused value(s)" + (" (limit reached)" if len(rows) == args.limit else ""))
    return 0


def _snapshots(args: argparse.Namespace) -> int:
    with _staging() as conn:
        rows = conn.execute(
            "select table_name, last_mode, last_batch_date, last_state, last_full_batch_date, last_full_state, "
            "last_promoted_full_batch_date, incremental_since_full from pipeline.table_snapshots "
            "where client_name = %s order by table_name", (args.client,)).fetchall()
    if not rows:
        print(f"no batch of client {args.client} in the ledger", file=sys.stderr)
        return 1
    width = max(len("table"), *(len(r[0]) for r in rows))
    print(f"{'table':<{width}}  newest file                       last full snapshot     last promoted full  "
          "increments since")
    for table, mode, day, state, full_day, full_state, promoted, since in rows:
        newest = f"{mode} {day} {state}"
        full = f"{full_day} {full_state}" if full_day else "none"
        print(f"{table:<{width}}  {newest:<32}  {full:<21}  {str(promoted or 'never'):<18}  {since}")
    return 0


def _status_database() -> Any:
    """The read-only status role's connection (airflow_settings.yaml's clientflow_status)."""
    from clientflow.config import ConnectionIds, PostgresSettings
    from clientflow.settings_file import connections

    c = connections()[ConnectionIds().status]
    return PostgresSettings.from_connection(c.get("host"), c.get("port"), c.get("schema"), c.get("login"),
                                            c.get("password"), c.get("extra"))


def _metrics_server(args: argparse.Namespace) -> int:
    import logging

    from clientflow.operations import metrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics.serve(_status_database, host=args.host, port=args.port)
    return 0


def _client_mapping(client: str, directory: str | None) -> Any:
    from clientflow.mapping import MAPPINGS_DIR, load_mapping

    path = Path(directory or MAPPINGS_DIR) / f"{client}.yaml"
    if not path.is_file():
        print(f"no mapping of client {client} in {path.parent}", file=sys.stderr)
        return None
    return load_mapping(path)


def _reconcile(args: argparse.Namespace) -> int:
    from datetime import date

    from clientflow.config import PipelineSettings
    from clientflow.errors import PipelineError
    from clientflow.operations import reconciliation

    mapping = _client_mapping(args.client, args.mappings_dir)
    if mapping is None:
        return 2
    try:
        report = reconciliation.reconcile(PipelineSettings.from_settings_file(), mapping,
                                          date.fromisoformat(args.date) if args.date else None,
                                          verify_data=not args.skip_data)
    except PipelineError as exc:
        print(f"reconciliation of client {args.client} could not finish: {exc}", file=sys.stderr)
        return 2
    print(reconciliation.render(report))
    return 1 if report.differences else 0


def _upload_policy(args: argparse.Namespace) -> int:
    from clientflow.operations.upload_policy import upload_policy

    bucket = args.bucket
    if bucket is None:
        from clientflow.config import PipelineSettings

        bucket = PipelineSettings.from_settings_file().s3.bucket
    try:
        print(json.dumps(upload_policy(args.client, bucket), indent=2))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


def _upload_key(args: argparse.Namespace) -> int:
    from clientflow.config import PipelineSettings
    from clientflow.operations import upload_keys

    s3 = PipelineSettings.from_settings_file().s3
    iam = s3.client("iam")
    try:
        if args.action == "create":
            if not args.out:
                print("create needs --out FILE: the secret is written there (mode 600), never printed", file=sys.stderr)
                return 2
            out = Path(args.out)
            if out.exists():
                print(f"{out} exists; it is never overwritten", file=sys.stderr)
                return 2
            key_id, secret = upload_keys.create_key(iam, args.client, args.bucket or s3.bucket)
            upload_keys.write_credentials(out, args.client, key_id, secret)
            print(f"created upload key {key_id} of {upload_keys.user_name(args.client)}; credentials in {out}")
        elif args.action == "retire":
            if not args.key_id:
                print("retire needs the KEY_ID (clientflow upload-key CLIENT list shows them)", file=sys.stderr)
                return 2
            upload_keys.retire_key(iam, args.client, args.key_id, offboard=args.offboard)
            print(f"retired upload key {args.key_id} of {upload_keys.user_name(args.client)}")
        else:
            keys = upload_keys.list_keys(iam, args.client)
            for key in keys:
                print(f"{key.key_id}  {key.status:<8}  created {key.created:%Y-%m-%d %H:%M:%S %Z}".rstrip())
            if not keys:
                print(f"client {args.client} has no upload key")
    except (upload_keys.KeyActionRefused, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def _read_only() -> Any:
    import psycopg

    return psycopg.connect(_status_database().conninfo())


def _status(args: argparse.Namespace) -> int:
    from clientflow.operations import oncall, status

    with _read_only() as conn:
        clients = [args.client] if args.client else status.known_clients(conn)
        print(oncall.render_status(conn, clients))
    return 0


def _batches(args: argparse.Namespace) -> int:
    from clientflow.operations import oncall

    with _read_only() as conn:
        print(oncall.render_batches(conn, args.client, args.limit))
    return 0


def _trace(args: argparse.Namespace) -> int:
    from clientflow.operations import oncall

    with _read_only() as conn:
        ingestion_id = oncall.resolve_job(conn, args.job_id)
        text = oncall.render_trace(conn, ingestion_id) if ingestion_id else None
    if text is None:
        print(f"no batch or file with job id {args.job_id} in the ledger", file=sys.stderr)
        return 1
    print(text)
    return 0


def _airflow_password() -> str | None:
    """The Airflow login's password for the REST API, or None (said on stderr) if not set."""
    import os

    password = os.environ.get("CLIENTFLOW_AIRFLOW_PASSWORD")
    if password is None:
        print("set CLIENTFLOW_AIRFLOW_PASSWORD (and CLIENTFLOW_AIRFLOW_USER) to the Airflow login that may "
              "trigger runs; the local stack's is admin / admin", file=sys.stderr)
    return password


def _airflow_login(api_url: str, password: str) -> str:
    """A token of Airflow's REST API for CLIENTFLOW_AIRFLOW_USER (default admin)."""
    import os

    from clientflow.operations import oncall

    return oncall.login(api_url, os.environ.get("CLIENTFLOW_AIRFLOW_USER", "admin"), password)


def _airflow_unreachable(api_url: str, exc: OSError) -> int:
    print(f"Airflow at {api_url} refused or could not be reached: {type(exc).__name__} "
          f"{getattr(exc, 'code', '')}".rstrip(), file=sys.stderr)
    return 1


def _reprocess(args: argparse.Namespace) -> int:
    from datetime import date

    from clientflow.operations import oncall

    with _read_only() as conn:
        try:
            conf = oncall.batch_to_reprocess(conn, args.client, date.fromisoformat(args.date), args.run_id)
        except oncall.NotReprocessable as exc:
            print(exc, file=sys.stderr)
            return 1
    dag_id = f"client_{args.client}"
    if args.dry_run:
        print(f"would trigger {dag_id} with {json.dumps(conf)} "
              f"(or: airflow dags trigger {dag_id} --conf '{json.dumps(conf)}')")
        return 0
    password = _airflow_password()
    if password is None:
        return 2
    try:
        token = _airflow_login(args.airflow_url, password)
        run_id = oncall.trigger(args.airflow_url, token, dag_id, conf)
    except OSError as exc:  # urllib's HTTP and connection errors
        return _airflow_unreachable(args.airflow_url, exc)
    print(f"triggered {dag_id} run {run_id} for batch {conf['batch_date']} run {conf['run_id']}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from datetime import date

    from clientflow.config import PipelineSettings
    from clientflow.operations import oncall, restore

    settings = PipelineSettings.from_settings_file()
    since = date.fromisoformat(args.since) if args.since else None
    dag_id = f"client_{args.client}"
    if args.dry_run:
        with _read_only() as conn:
            replays = restore.plan(conn, args.client, since)
        for replay in replays:
            print(f"would replay {dag_id} batch {replay.day} run {replay.run_id} (ingestion id {replay.ingestion_id})")
        print(f"{len(replays)} batch(es); dummy production would first be synced from production")
        return 0
    if not (args.by and args.reason):
        print("--by and --reason are required: they are recorded in the ledger with each re-offered batch",
              file=sys.stderr)
        return 2
    password = _airflow_password()
    if password is None:
        return 2
    try:
        replays, copied = restore.prepare(settings, args.client, by=args.by, reason=args.reason, since=since)
    except restore.RestoreRefused as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"dummy production of {args.client} synced from production: "
          + ", ".join(f"{name} {count}" for name, count in copied.items()))
    try:
        token = _airflow_login(args.airflow_url, password)

        def run(replay: restore.Replay) -> str:
            run_id = oncall.trigger(args.airflow_url, token, dag_id, replay.conf(), kind="restore")
            print(f"replaying batch {replay.day} run {replay.run_id}: {dag_id} run {run_id}", flush=True)
            return oncall.wait_for_run(args.airflow_url, token, dag_id, run_id, args.timeout)

        done = restore.replay_all(replays, run)
    except OSError as exc:  # urllib's HTTP and connection errors
        return _airflow_unreachable(args.airflow_url, exc)
    for replay, state in done:
        print(f"  {replay.day} run {replay.run_id}: {state}")
    if len(done) < len(replays) or done[-1][1] != "success":
        print(f"stopped at batch {done[-1][0].day} run {done[-1][0].run_id} ({done[-1][1]}); the later batches "
              f"stay re-offered: fix the cause and run `clientflow restore {args.client} --since "
              f"{done[-1][0].day} ...` again", file=sys.stderr)
        return 1
    print(f"{len(done)} batch(es) replayed; check with: clientflow reconcile {args.client}")
    return 0


def _offboard(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from clientflow.config import PipelineSettings
    from clientflow.operations import offboard, oncall, upload_keys

    mapping = _client_mapping(args.client, args.mappings_dir)
    if mapping is None:
        print("offboarding needs the client's mapping (its tables and sweep window, and its DAG, whose runs must "
              "finish): put the file back, offboard, then remove it", file=sys.stderr)
        return 2
    s3_settings = PipelineSettings.from_settings_file().s3
    s3, iam, dag_id = s3_settings.client(), s3_settings.client("iam"), f"client_{args.client}"
    password = _airflow_password()
    if password is None:
        return 2
    try:
        airflow = oncall.AirflowApi(args.airflow_url, _airflow_login(args.airflow_url, password))

        def look() -> offboard.InFlight:
            with _read_only() as conn:
                return offboard.look(conn, s3, s3_settings.bucket, mapping, airflow, datetime.now(UTC).date())

        if args.dry_run:
            keys = upload_keys.list_keys(iam, args.client)
            print(f"would retire upload key(s) of {upload_keys.user_name(args.client)}: "
                  f"{', '.join(k.key_id for k in keys) or 'none left'}")
            print(f"in flight now: {look().describe()}")
            print(f"would then pause {dag_id} (paused now: {airflow.is_paused(dag_id)})")
            return 0
        for key_id in offboard.retire_all_keys(iam, args.client):
            print(f"retired upload key {key_id} of {upload_keys.user_name(args.client)}", flush=True)
        last = offboard.wait_and_pause(look, airflow, dag_id, args.client, timeout=args.timeout, poll=args.poll,
                                       say=lambda line: print(line, flush=True))
    except offboard.OffboardIncomplete as exc:
        print(f"{exc}; the upload keys stay retired. Run `clientflow offboard {args.client}` again once "
              "that has finished (`clientflow batches` and the DAG's grid show it)", file=sys.stderr)
        return 1
    except OSError as exc:  # urllib's HTTP and connection errors
        return _airflow_unreachable(args.airflow_url, exc)
    print(f"paused {dag_id}: no batch of {args.client} in flight, none waiting in the bucket, no run running or queued")
    for line in last.for_a_person:
        print(f"left for a person (not processed again by offboarding): batch {line}")
    print(f"next: remove include/mappings/{args.client}.yaml and deploy, then run `clientflow bucket-events`")
    return 0


def _add_on_call_commands(commands: Any) -> None:
    """The on-call engineer's commands: status, batches, trace, reprocess, restore."""
    shown = commands.add_parser("status", help="per client: last promoted batch, batches by state, incidents")
    shown.add_argument("client", nargs="?", help="one client (default: every client in the ledger)")
    shown.set_defaults(run=_status)
    listed = commands.add_parser("batches", help="a client's batches, newest first")
    listed.add_argument("client")
    listed.add_argument("--limit", type=int, default=50)
    listed.set_defaults(run=_batches)
    traced = commands.add_parser("trace", help="a batch from its job id to its files, events and rows")
    traced.add_argument("job_id", help="the batch's ingestion id, or the job id of one of its files")
    traced.set_defaults(run=_trace)
    again = commands.add_parser("reprocess", help="run a FAILED batch again, once its cause is fixed")
    again.add_argument("client")
    again.add_argument("date", help="the batch date (YYYY-MM-DD)")
    again.add_argument("--run-id", help="the extractor run (default: the date's newest batch in the ledger)")
    again.add_argument("--airflow-url", default="http://127.0.0.1:8080", help="Airflow's API server")
    again.add_argument("--dry-run", action="store_true", help="print what would be triggered, trigger nothing")
    again.set_defaults(run=_reprocess)
    restored = commands.add_parser("restore", help="rebuild a client's production rows from the JSON files kept in the bucket")
    restored.add_argument("client")
    restored.add_argument("--by", help="who decides (recorded in the ledger)")
    restored.add_argument("--reason", help="why (recorded in the ledger)")
    restored.add_argument("--since", help="replay the promoted batches from this date (YYYY-MM-DD); default: all")
    restored.add_argument("--airflow-url", default="http://127.0.0.1:8080", help="Airflow's API server")
    restored.add_argument("--timeout", type=float, default=3600, help="seconds to wait for each batch's run")
    restored.add_argument("--dry-run", action="store_true", help="print the batches it would replay, change nothing")
    restored.set_defaults(run=_restore)
    leaving = commands.add_parser("offboard", help="retire a client's upload keys, let what arrived finish, pause its DAG")
    leaving.add_argument("client")
    leaving.add_argument("--mappings-dir", help="where the client's mapping is (default: the project's)")
    leaving.add_argument("--airflow-url", default="http://127.0.0.1:8080", help="Airflow's API server")
    leaving.add_argument("--timeout", type=float, default=3600, help="seconds to wait for what is in flight")
    leaving.add_argument("--poll", type=float, default=5, help="seconds between looks")
    leaving.add_argument("--dry-run", action="store_true", help="print what it would do and what is in flight, change nothing")
    leaving.set_defaults(run=_offboard)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="clientflow", description="Operate the clientflow pipeline.")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser("check-mapping", help="validate client mapping files")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(run=_check_mapping)
    commands.add_parser("mapping-schema", help="print the mapping files' JSON Schema").set_defaults(run=_mapping_schema)
    rejects = commands.add_parser("rejects", help="list the values a client's batches refused")
    rejects.add_argument("client")
    rejects.add_argument("--batch", help="one batch (its ingestion id)")
    rejects.add_argument("--limit", type=int, default=200)
    rejects.set_defaults(run=_rejects)
    for name, run, text in (("accept", _accept, "accept a batch a validation gate stopped"),
                            ("reoffer", _reoffer, "let a batch run again, after its mapping was fixed")):
        action = commands.add_parser(name, help=text)
        action.add_argument("ingestion_id")
        action.add_argument("--by", required=True, help="who decides (recorded in the ledger)")
        action.add_argument("--reason", required=True, help="why (recorded in the ledger)")
        if name == "accept":
            action.add_argument("--gate", action="append", help="a gate to accept (default: every acceptable gate)")
        action.set_defaults(run=run)
    snapshots = commands.add_parser("snapshots", help="each client table's last full snapshot and the increments since")
    snapshots.add_argument("client")
    snapshots.set_defaults(run=_snapshots)
    commands.add_parser("manifest-schema", help="print the manifest's JSON Schema").set_defaults(run=_manifest_schema)
    commands.add_parser("bucket-events", help="set up the bucket's manifest notifications to each client's queue"
                        ).set_defaults(run=_bucket_events)
    served = commands.add_parser("metrics-server", help="serve Prometheus metrics read from the ledger")
    served.add_argument("--host", default="127.0.0.1")
    served.add_argument("--port", type=int, default=9469)
    served.set_defaults(run=_metrics_server)
    reconcile = commands.add_parser("reconcile", help="prove nothing was lost or duplicated, bucket to production")
    reconcile.add_argument("client")
    reconcile.add_argument("--date", help="one batch date (YYYY-MM-DD); default: every batch and the client's tables")
    reconcile.add_argument("--skip-data", action="store_true",
                           help="trust the data files' checksums instead of hashing each again")
    reconcile.add_argument("--mappings-dir", help="where the client's mapping is (default: the project's)")
    reconcile.set_defaults(run=_reconcile)
    policy = commands.add_parser("upload-policy", help="the IAM policy of a client's upload credentials")
    policy.add_argument("client")
    policy.add_argument("--bucket", help="the landing bucket (default: the clientflow_s3 connection's)")
    policy.set_defaults(run=_upload_policy)
    key = commands.add_parser("upload-key", help="create, list or retire a client's upload keys (rotation)")
    key.add_argument("client")
    key.add_argument("action", choices=("create", "list", "retire"))
    key.add_argument("key_id", nargs="?", help="the key to retire")
    key.add_argument("--out", help="create: the file the new credentials are written to (mode 600)")
    key.add_argument("--bucket", help="create: the landing bucket of the policy (default: the connection's)")
    key.add_argument("--offboard", action="store_true", help="retire: allow retiring the client's last key")
    key.set_defaults(run=_upload_key)
    _add_on_call_commands(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
