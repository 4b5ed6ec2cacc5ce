"""Create the ``iriscare`` sample client: an optometry group's practice database in MariaDB.

Everything differs from ``ehrlogic``: table and column names (``PatientRecords.GivenName``),
types (DATETIME in the practice's local time, TINYINT(1) booleans, DECIMAL fees, fees in cents,
ENUM codes such as ``SCH``/``CMP``, a birth date stored as a DATETIME at midnight), and a patient
table that keeps every version of a patient (several rows per ``PatientNo``; the mapping keeps the
latest by ``UpdatedOn``). Phones come in three formats and become E.164.

Deterministic: every value is computed from row numbers, with MariaDB's sequence engine, so
``--patients 1000000`` builds the benchmark size in seconds.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import pymysql

log = logging.getLogger(__name__)

READER = "iriscare_reader"
READER_PASSWORD = "local-only-reader"  # noqa: S105 - the local sample's read-only role

_TABLES = (
    """CREATE TABLE Doctors (
        DoctorID INT PRIMARY KEY,
        FirstName VARCHAR(40),
        LastName VARCHAR(60) NOT NULL,
        Credential ENUM('OD', 'MD', 'OPT', 'TECH') NOT NULL,
        NPI CHAR(10),
        Email VARCHAR(120),
        IsActive TINYINT(1) NOT NULL
    ) DEFAULT CHARSET = utf8mb4""",
    """CREATE TABLE PatientRecords (
        RecordID INT PRIMARY KEY,
        PatientNo INT NOT NULL,
        GivenName VARCHAR(40),
        FamilyName VARCHAR(60) NOT NULL,
        BirthDate DATETIME,
        SexCode ENUM('F', 'M', 'X', 'U'),
        EmailAddr VARCHAR(120),
        MobilePhone VARCHAR(30),
        PostCode VARCHAR(10),
        CreatedOn DATETIME NOT NULL,
        UpdatedOn DATETIME NOT NULL,
        KEY (PatientNo)
    ) DEFAULT CHARSET = utf8mb4""",
    """CREATE TABLE Exams (
        ExamID BIGINT PRIMARY KEY,
        PatientNo INT NOT NULL,
        DoctorID INT NOT NULL,
        ExamStart DATETIME NOT NULL,
        LengthMins SMALLINT NOT NULL,
        StatusCode ENUM('SCH', 'CMP', 'CXL', 'NS') NOT NULL,
        VisitReason VARCHAR(200),
        FeeAmount DECIMAL(8, 2)
    ) DEFAULT CHARSET = utf8mb4""",
    """CREATE TABLE ExamLines (
        LineID BIGINT PRIMARY KEY,
        ExamID BIGINT NOT NULL,
        CPTCode CHAR(5) NOT NULL,
        EyeCode ENUM('OD', 'OS', 'OU'),
        ChargeCents INT
    ) DEFAULT CHARSET = utf8mb4""",
)

_FIRST = "'Ava','Bilal','Chen','Dara','Emeka','Fatima','Gus','Hana','Ivo','Jia','Kai','Lior','Maya'," \
    "'Noor','Oskar','Pia','Rafa','Sun','Teo','Uma','Vik','Wren','Yara','Zed','Ángel','Søren','Chloé'," \
    "'Beatriz','Nuño','Zoë'"
_LAST = "'Anders','Bauer','Costa','Dlamini','Eriksen','Fujita','Gonzalez','Horvat','Iqbal','Jensen'," \
    "'Kaur','Lopez','Mensah','Nakamura','Ortiz','Petrov','Quist','Reyes','Schmidt','Tran'"

_DOCTORS = f"""
INSERT INTO Doctors
SELECT seq,
       ELT(1 + (seq * 7) %% 30, {_FIRST}),
       ELT(1 + (seq * 11) %% 20, {_LAST}),
       ELT(1 + seq %% 4, 'OD', 'OD', 'MD', 'OPT'),
       IF(seq %% 7 = 0, NULL, CAST(1200000000 + seq * 104723 AS CHAR)),
       IF(seq %% 5 = 0, NULL, CONCAT(ELT(1 + (seq * 7) %% 30, {_FIRST}), '.OD', seq, '@IrisCare.Example')),
       IF(seq %% 6 = 0, 0, 1)
FROM seq_1_to_{{doctors}}
"""

# Patient p has a second, newer version when p %% 33 = 0 (a changed family name and phone).
_PATIENTS = f"""
INSERT INTO PatientRecords
SELECT seq,
       IF(seq > %(patients)s, (seq - %(patients)s) * 33, seq),
       IF(seq %% 41 = 0, NULL, ELT(1 + (seq * 13) %% 30, {_FIRST})),
       CONCAT(ELT(1 + (IF(seq > %(patients)s, (seq - %(patients)s) * 33, seq) * 17) %% 20, {_LAST}),
              IF(seq > %(patients)s, '-Moved', '')),
       IF(seq %% 60 = 0, NULL, TIMESTAMP('1935-01-01') + INTERVAL ((seq * 37) %% 30000) DAY),
       IF(seq %% 50 = 0, NULL, ELT(1 + seq %% 5, 'F', 'M', 'F', 'X', 'U')),
       IF(seq %% 9 = 0, NULL, CONCAT(LOWER(ELT(1 + (seq * 17) %% 20, {_LAST})), seq, '@Patients.Example')),
       CASE seq %% 4
           WHEN 0 THEN NULL
           WHEN 1 THEN CONCAT('312-555-', LPAD(seq %% 10000, 4, '0'))
           WHEN 2 THEN CONCAT('(773) 555 ', LPAD(seq %% 10000, 4, '0'))
           ELSE CONCAT('+1 630 555 ', LPAD(seq %% 10000, 4, '0'))
       END,
       LPAD(60600 + seq %% 100, 5, '0'),
       TIMESTAMP('2018-03-01 08:00:00') + INTERVAL ((seq * 7919) %% 4000000) MINUTE,
       TIMESTAMP('2024-01-01 08:00:00') + INTERVAL (IF(seq > %(patients)s, 500000, 0) + (seq * 31) %% 400000) MINUTE
FROM seq_1_to_{{records}}
"""

_EXAMS = """
INSERT INTO Exams
SELECT seq,
       1 + (seq * 7) %% %(patients)s,
       1 + (seq * 13) %% %(doctors)s,
       TIMESTAMP('2025-01-06 08:00:00') + INTERVAL (20 * ((seq * 104729) %% 50000)) MINUTE,
       ELT(1 + seq %% 4, 20, 30, 40, 60),
       ELT(1 + seq %% 9, 'CMP', 'CMP', 'CMP', 'SCH', 'CMP', 'CXL', 'CMP', 'NS', 'CMP'),
       IF(seq %% 3 = 0, NULL, ELT(1 + seq %% 6, 'Annual eye exam', 'Contact lens fitting', 'Dry eye',
                                 'Glaucoma follow-up', 'Blurred vision', 'Red eye: urgent')),
       IF(seq %% 10 = 0, NULL, 75 + (seq %% 40) * 2.5)
FROM seq_1_to_{exams}
"""

# Every exam has a line; every third one a second (fitting, imaging).
_LINES = """
INSERT INTO ExamLines
SELECT seq,
       IF(seq > %(exams)s, (seq - %(exams)s) * 3, seq),
       ELT(1 + seq %% 6, '92004', '92014', '92015', '92310', '92134', '92083'),
       IF(seq %% 6 IN (0, 1, 2), NULL, ELT(1 + seq %% 3, 'OD', 'OS', 'OU')),
       IF(seq %% 11 = 0, NULL, 4500 + (seq %% 50) * 125)
FROM seq_1_to_{lines}
"""


def sizes(patients: int) -> dict[str, int]:
    exams = patients * 2
    return {"patients": patients, "records": patients + patients // 33, "doctors": max(4, patients // 250),
            "exams": exams, "lines": exams + exams // 3}


def _connect(host: str, port: int, user: str, password: str, database: str | None = None) -> Any:
    return pymysql.connect(host=host, port=port, user=user, password=password, database=database,
                           charset="utf8mb4", autocommit=True)


def create(database: str, patients: int, *, host: str = "127.0.0.1", port: int = 3306, user: str = "root",
           password: str = "") -> dict[str, int]:
    """(Re)create ``database`` with the sample client's tables and a read-only user. Returns the row counts."""
    counts = sizes(patients)
    admin = _connect(host, port, user, password)
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
        cur.execute(f"CREATE USER IF NOT EXISTS '{READER}'@'%%' IDENTIFIED BY %s", (READER_PASSWORD,))
        cur.execute(f"GRANT SELECT ON `{database}`.* TO '{READER}'@'%'")
        cur.execute(f"USE `{database}`")
        cur.execute("SET time_zone = '+00:00'")
        for ddl in _TABLES:
            cur.execute(ddl)
        cur.execute(_DOCTORS.replace("{doctors}", str(counts["doctors"])), counts)
        cur.execute(_PATIENTS.replace("{records}", str(counts["records"])), counts)
        cur.execute(_EXAMS.replace("{exams}", str(counts["exams"])), counts)
        cur.execute(_LINES.format(lines=counts["lines"]), counts)
    admin.close()
    log.info("created sample client database %s: %s", database, counts)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--database", default="iriscare_source")
    parser.add_argument("--patients", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    create(args.database, args.patients, host=args.host, port=args.port, user=args.user)


if __name__ == "__main__":
    main()
