"""A client's upload user and its access keys (``clientflow upload-key``): onboarding and rotation.

The upload user is ``clientflow-upload-<client>`` with one inline policy, ``clientflow-upload``:
the document ``clientflow upload-policy`` prints (new objects under the client's prefix, nothing
else). IAM lets a user hold two access keys, which is what a rotation without downtime needs:

1. ``create``: a second key, written to a file only the operator can read (never printed);
2. the client puts it into the extractor's environment (``AWS_ACCESS_KEY_ID``,
   ``AWS_SECRET_ACCESS_KEY``), and its next batch arrives;
3. ``retire`` the old key: deactivated, then deleted. Retiring the last key is refused unless the
   client is being offboarded (``--offboard``).

IAM is called through the ``clientflow_s3`` connection's endpoint and credentials (on AWS: an
identity allowed ``iam:*AccessKey*``, ``iam:CreateUser``, ``iam:PutUserPolicy`` on
``user/clientflow-upload-*``). The secret is returned once, to the caller that writes it out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from client_extractor.contract import CLIENT_NAME
from clientflow.operations.upload_policy import upload_policy

POLICY_NAME = "clientflow-upload"
MAX_KEYS = 2
"""IAM's limit of access keys per user."""


class KeyActionRefused(ValueError):
    """A key action that would leave the client without credentials, or names an unknown key."""


@dataclass(frozen=True)
class UploadKey:
    key_id: str
    status: str
    created: datetime


def user_name(client: str) -> str:
    if not CLIENT_NAME.fullmatch(client):
        raise ValueError(f"{client!r} is not a client name (lower-case letters, digits and _; a letter first)")
    return f"clientflow-upload-{client}"


def ensure_user(iam: Any, client: str, bucket: str) -> str:
    """Create the client's upload user if missing, and (re)write its policy; the user's name."""
    name = user_name(client)
    try:
        iam.get_user(UserName=name)
    except iam.exceptions.NoSuchEntityException:
        iam.create_user(UserName=name, Tags=[{"Key": "clientflow-client", "Value": client}])
    iam.put_user_policy(UserName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(upload_policy(client, bucket)))
    return name


def list_keys(iam: Any, client: str) -> list[UploadKey]:
    try:
        found = iam.list_access_keys(UserName=user_name(client))["AccessKeyMetadata"]
    except iam.exceptions.NoSuchEntityException:
        return []
    return sorted((UploadKey(k["AccessKeyId"], k["Status"], k["CreateDate"]) for k in found), key=lambda k: k.created)


def create_key(iam: Any, client: str, bucket: str) -> tuple[str, str]:
    """A new access key of the client's upload user: (key id, secret)."""
    name = ensure_user(iam, client, bucket)
    held = list_keys(iam, client)
    if len(held) >= MAX_KEYS:
        raise KeyActionRefused(f"client {client}'s upload user already holds {len(held)} keys "
                               f"({', '.join(k.key_id for k in held)}); retire the old one first: "
                               f"clientflow upload-key {client} retire KEY_ID")
    made = iam.create_access_key(UserName=name)["AccessKey"]
    return str(made["AccessKeyId"]), str(made["SecretAccessKey"])


def retire_key(iam: Any, client: str, key_id: str, *, offboard: bool = False) -> None:
    """Deactivate, then delete, one of the client's keys."""
    held = list_keys(iam, client)
    if key_id not in {k.key_id for k in held}:
        raise KeyActionRefused(f"client {client}'s upload user has no key {key_id}")
    if len(held) == 1 and not offboard:
        raise KeyActionRefused(f"{key_id} is client {client}'s only upload key: the client could upload nothing. "
                               "Create its successor first (or pass --offboard to end the client's uploads)")
    name = user_name(client)
    iam.update_access_key(UserName=name, AccessKeyId=key_id, Status="Inactive")
    iam.delete_access_key(UserName=name, AccessKeyId=key_id)


def write_credentials(path: Path, client: str, key_id: str, secret: str) -> None:
    """The key as an environment file for the client's extractor, readable by its owner only;
    an existing file is never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(f"# clientflow upload credentials of client {client}. Hand them over through the secret-sharing\n"
                  "# channel (never by email), then delete this file.\n"
                  f"AWS_ACCESS_KEY_ID={key_id}\nAWS_SECRET_ACCESS_KEY={secret}\n")


__all__ = ["KeyActionRefused", "UploadKey", "create_key", "ensure_user", "list_keys", "retire_key", "user_name",
           "write_credentials"]
