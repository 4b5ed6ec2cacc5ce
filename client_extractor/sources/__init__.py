"""The source readers, one module per dialect, and READERS: the reader class for each dialect.

Every dialect module is imported here statically, so that PyInstaller (which follows imports from
``__main__``) packs all of them into the binary. Their drivers (psycopg, pymysql) are imported inside
the readers' methods: a run loads only the driver it connects with.
"""

from __future__ import annotations

from client_extractor.sources.base import Reader
from client_extractor.sources.mysql import MysqlReader
from client_extractor.sources.postgres import PostgresReader
from client_extractor.sources.sqlite import SqliteReader

READERS: dict[str, type[Reader]] = {"postgresql": PostgresReader, "mysql": MysqlReader, "sqlite": SqliteReader}

__all__ = ["READERS", "MysqlReader", "PostgresReader", "Reader", "SqliteReader"]
