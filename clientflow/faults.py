"""Faults of the services a stage uses, turned into our errors where they happen.

:func:`named` wraps a block of work on one batch (or one of its tables): a PostgreSQL, S3 or
Redis exception raised inside it leaves as :class:`~clientflow.errors.TransientError` (a retry may
help) or :class:`~clientflow.errors.PermanentError`, naming the client, table, date, run and file,
and never chaining the original message, which may quote a row value.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import redis
from botocore.exceptions import BotoCoreError, ClientError

from clientflow.db import wrap_db_error
from clientflow.errors import PermanentError, PipelineError, TransientError, Where

# S3 answers that no retry will change: the credentials or the bucket are wrong.
_S3_PERMANENT = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "403"}


@contextmanager
def named(where: Where, doing: str) -> Iterator[None]:
    try:
        yield
    except PipelineError:
        raise  # already ours, and already named
    except psycopg.Error as exc:
        raise wrap_db_error(exc, where, doing) from None
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "?"))
        error = PermanentError if code in _S3_PERMANENT else TransientError
        raise error(f"{doing} failed: S3 answered {code}", where) from None
    except BotoCoreError as exc:
        raise TransientError(f"{doing} failed: S3 error {type(exc).__name__}", where) from None
    except redis.RedisError as exc:
        raise TransientError(f"{doing} failed: Redis error {type(exc).__name__}", where) from None
