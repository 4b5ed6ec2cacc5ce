"""client-extractor: copy the tables of one client database into the clientflow layout.

Clients run the built binary (PyInstaller onefile) against their own PostgreSQL, MySQL/MariaDB or
SQLite database. For every table it writes, under a local folder or an S3 prefix:

    client=<client>/table=<quoted table>/date=<YYYYMMDD>/run_id=<run_id>/data.json
    client=<client>/table=<quoted table>/date=<YYYYMMDD>/run_id=<run_id>/manifest.json

data.json is a JSON array with one object per row, streamed page by page while sha256 is fed in
the same pass; manifest.json is written last, never overwrites, and describes how every column is
encoded (see docs/extractor.md for the encoding table, exit codes and the config file).

Privacy rules that the whole package keeps: no row value, password or token is ever printed, logged,
written to the manifest or put into an exception message that reaches the user. Driver errors are
reduced to their class and SQLSTATE/code; unexpected errors to their type and line number.

One module per concern (``__main__`` is the binary's entry point and calls ``cli.main``):

- ``contract``: what crosses to the pipeline (layout, identifier rules, manifest fields); shared
  with ``clientflow``
- ``errors``: exit codes, the ExtractorError hierarchy, safe argparse messages, warnings
- ``settings``: command line merged over the TOML config, source URL, password
- ``encoding``: Column and the value encoders shared by all dialects
- ``datafile``: data.json written and hashed in one pass, the progress line
- ``sources``: one Reader per source dialect (``base``, ``postgres``, ``mysql``, ``sqlite``)
- ``targets``: the local folder and S3 outputs
- ``manifest``: manifest.json
- ``cli``: one table at a time, the summary, ``main``

This module stays light (constants only): the pipeline imports ``client_extractor.contract``, which
runs it, and must not pull in the extractor or its drivers.
"""

VERSION = "0.1.0"
"""The extractor's version: ``--version`` and the manifest's ``extractor_version``."""
PROG = "client-extractor"
"""The program's name in messages, ``--help``, and the name it gives itself to servers."""
