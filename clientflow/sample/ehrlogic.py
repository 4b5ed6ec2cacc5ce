"""Create the ``ehrlogic`` sample client: a dental group's practice database in PostgreSQL.

Its column names are the client's own (``pt_first_nm``, ``patient_dob``...) and its values are
messy the way real ones are: padded names, mixed-case emails, dates stored as text in two
formats, phone numbers in three formats, status codes in several spellings, some NULLs.

Everything is computed from row numbers, so the same ``--patients`` gives the same data on every
machine. ``python -m clientflow.sample.ehrlogic --patients 1000000`` builds the benchmark size.
"""

from __future__ import annotations

import argparse
import logging

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

READER_ROLE = "ehrlogic_reader"

_SCHEMA = """
create table dim_provider (
    prov_id        integer primary key,
    prov_first_nm  text,
    prov_last_nm   text not null,
    prov_specialty text not null,
    npi_num        text,
    prov_email     text,
    is_active      char(1) not null
);
create table dim_patient (
    pt_id          integer primary key,
    pt_first_nm    text,
    pt_last_nm     text not null,
    patient_dob    text,
    gender         text,
    pt_email       text,
    phone_num      text,
    addr_line1     text,
    city           text,
    state_cd       char(2),
    zip            text,
    created_ts     timestamp,
    balance_amt    numeric(10, 2)
);
create table fact_appointment (
    appt_id        bigint primary key,
    pt_id          integer not null references dim_patient (pt_id),
    prov_id        integer not null references dim_provider (prov_id),
    appt_start     timestamptz not null,
    appt_len_min   integer not null,
    appt_status    text not null,
    reason_txt     text,
    fee_amt        numeric(10, 2)
);
create table fact_procedure (
    proc_id        bigint primary key,
    appt_id        bigint not null references fact_appointment (appt_id),
    cdt_code       text not null,
    tooth_num      text,
    proc_fee       numeric(10, 2)
);
"""

_FIRST = "array['Ana','Ben','Chloe','Dmitri','Elena','Farid','Grace','Hiro','Ines','Jamal'," \
    "'Kofi','Lena','Mateo','Nadia','Omar','Priya','Quinn','Rosa','Sven','Tala','Umar','Vera'," \
    "'Wen','Ximena','Yusuf','Zoe','José','Zoë','Łukasz','Aoife']"
_LAST = "array['Smith','García','Nguyen','Okafor','Kowalski','Haddad','Tanaka','Müller'," \
    "'Johansson','Rossi','Dubois','Silva','Kim','Patel','Ivanova','O''Brien','Cohen','Novak'," \
    "'Adeyemi','Larsen']"

_PROVIDERS = f"""
insert into dim_provider
select i,
       ({_FIRST})[1 + (i * 7) %% 30],
       ({_LAST})[1 + (i * 11) %% 20],
       (array['Dentist','ORTHO','Hygienist','RDH','Optometrist',' dentist '])[1 + i %% 6],
       case when i %% 9 = 0 then null else (1000000000 + i * 7919)::text end,
       case when i %% 5 = 0 then null
            else ({_FIRST})[1 + (i * 7) %% 30] || '.DDS' || i || '@EHRLogic.Example' end,
       (array['Y','Y','y','N'])[1 + i %% 4]
from generate_series(1, %(providers)s) as i
"""

_PATIENTS = f"""
insert into dim_patient
select i,
       case when i %% 7 = 0 then '  ' || ({_FIRST})[1 + (i * 13) %% 30] || ' '
            when i %% 97 = 0 then null
            else ({_FIRST})[1 + (i * 13) %% 30] end,
       ({_LAST})[1 + (i * 17) %% 20],
       case when i %% 50 = 0 then null
            when i %% 4 = 2 then to_char(date '1940-01-01' + (i * 37) %% 30000, 'MM/DD/YYYY')
            when i %% 4 = 3 then ' ' || to_char(date '1940-01-01' + (i * 37) %% 30000, 'YYYY-MM-DD') || ' '
            else to_char(date '1940-01-01' + (i * 37) %% 30000, 'YYYY-MM-DD') end,
       (array['F','M','f',' m ','Female','U',null,'O'])[1 + i %% 8],
       case when i %% 10 = 0 then null
            when i %% 3 = 0 then upper(({_FIRST})[1 + (i * 13) %% 30]) || '.' || i || '@Mail.Example'
            else lower(({_LAST})[1 + (i * 17) %% 20]) || i || '@mail.example' end,
       case when i %% 20 = 0 then null
            when i %% 3 = 0 then '(555) ' || lpad((i %% 1000)::text, 3, '0') || '-' || lpad((i %% 10000)::text, 4, '0')
            when i %% 3 = 1 then '555.' || lpad((i %% 1000)::text, 3, '0') || '.' || lpad((i %% 10000)::text, 4, '0')
            else '+1 555 ' || lpad((i %% 1000)::text, 3, '0') || ' ' || lpad((i %% 10000)::text, 4, '0') end,
       (i %% 9000 + 100)::text || ' ' || ({_LAST})[1 + (i * 3) %% 20] || ' St',
       (array['Springfield','Riverton','Lakeside','Fairview','Oakdale'])[1 + i %% 5],
       (array['NY','NJ','CT','PA','MA'])[1 + i %% 5],
       case when i %% 11 = 0 then ' ' || lpad((i %% 100000)::text, 5, '0')
            else lpad((i %% 100000)::text, 5, '0') end,
       timestamp '2015-01-01 08:00' + make_interval(mins => ((i::bigint * 7919) %% 5000000)::int),
       case when i %% 6 = 0 then null else ((i * 37) %% 100000) / 100.0 end
from generate_series(1, %(patients)s) as i
"""

_APPOINTMENTS = """
insert into fact_appointment
select a,
       1 + (a * 7) %% %(patients)s,
       1 + (a * 13) %% %(providers)s,
       timestamptz '2024-01-01 09:00+00' + make_interval(mins => 15 * ((a::bigint * 104729) %% 70000)::int),
       (array[15, 30, 30, 45, 60, 90])[1 + a %% 6],
       (array['Completed','CANCELED','No Show','Booked',' booked ','Done','cancelled'])[1 + a %% 7],
       case when a %% 4 = 0 then null
            else (array['Cleaning','Filling','Crown prep','Eye exam','Contact lens fitting',
                        'Emergency: chipped tooth','Follow-up'])[1 + a %% 7] end,
       case when a %% 8 = 0 then null else ((a * 53) %% 60000) / 100.0 end
from generate_series(1, %(appointments)s) as a
"""

# Every other appointment has a procedure: codes in ADA's CDT, sometimes lower-cased; a tooth
# (padded with spaces now and then) for restorative codes, none for exams and cleanings.
_PROCEDURES = """
insert into fact_procedure
select p,
       2 * p,
       case when p %% 13 = 0 then lower(c.code) else c.code end,
       case when c.tooth then (case when p %% 5 = 0 then ' ' else '' end) || (1 + p %% 32)::text end,
       case when p %% 9 = 0 then null else c.fee + (p %% 7) * 5 end
from generate_series(1, %(procedures)s) as p
cross join lateral (
    select (array['D0120','D1110','D0274','D2391','D2740','D7140','D0150'])[1 + p %% 7] as code,
           (1 + p %% 7) in (4, 5, 6) as tooth,
           (array[55, 110, 70, 160, 1150, 240, 95])[1 + p %% 7]::numeric as fee
) as c
"""


def sizes(patients: int) -> dict[str, int]:
    return {
        "patients": patients,
        "providers": max(5, patients // 200),
        "appointments": patients * 2,
        "procedures": patients,
    }


def create(admin_dsn: str, database: str, patients: int) -> dict[str, int]:
    """(Re)create ``database`` holding the sample client's tables. Returns the row counts."""
    counts = sizes(patients)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(database)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
        exists = admin.execute("select 1 from pg_roles where rolname = %s", (READER_ROLE,)).fetchone()
        if not exists:
            admin.execute(sql.SQL("create role {} login").format(sql.Identifier(READER_ROLE)))
    source_dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=database)
    with psycopg.connect(source_dsn) as conn:
        conn.execute(_SCHEMA)
        conn.execute(_PROVIDERS, counts)
        conn.execute(_PATIENTS, counts)
        conn.execute(_APPOINTMENTS, counts)
        conn.execute(_PROCEDURES, counts)
        conn.execute(sql.SQL("grant select on all tables in schema public to {}").format(
            sql.Identifier(READER_ROLE)))
        conn.execute("analyze")
    log.info("created sample client database %s: %s", database, counts)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--database", default="ehrlogic_source")
    parser.add_argument("--patients", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    create(args.admin_dsn, args.database, args.patients)


if __name__ == "__main__":
    main()
