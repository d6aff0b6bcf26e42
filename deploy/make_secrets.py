#!/usr/bin/env python3
"""Write the secrets files compose.yaml mounts, with fresh random values, and print the admin
API token once (it is kept nowhere, only its hash is). Python's standard library only: no
``txn`` needed.

    python3 deploy/make_secrets.py            # writes ./secrets/ next to compose.yaml
    python3 deploy/make_secrets.py DIR        # or into DIR

It refuses to overwrite: the database passwords are set once, when the Postgres volume is
initialised (deploy/initdb.sql), and new files would no longer match them. To start over:
``docker compose down -v && rm -r secrets`` (this deletes the stack's data).

The folder is made readable by its owner only (0700); the files in it are 0644, because
compose mounts them into the containers as they are, where the services run as other users
(uid 10001 for this project's image, 999 for Postgres) who must read them. Nobody else on the
host gets past the folder.

What it writes (one file per compose secret, see the ``secrets:`` section of compose.yaml):

- ``postgres_password``: the Postgres superuser's (only the image's initialisation uses it).
- ``<db>_db_password``: the password of the role ``<db>_owner`` that owns database ``<db>``
  (``txn_log`` for the coordinators, one per participant service); read by deploy/initdb.sql
  and by the migration job.
- ``<db>_dsn``: that role's DSN, what the service connects with (``TXN_LOG_DSN`` /
  ``TXNP_DSN``).
- ``<participant>_secret``: each participant service's own secret (``TXNP_SECRET``), and
  ``txn_participant_secrets``: all of them as JSON for the coordinators.
- ``txn_api_tokens``: the coordinators' tokens (the admin's; orders', scopes submit and read);
  ``txnp_api_tokens``: the participants' business endpoints' (the admin's);
  ``orders_coordinator_token``: the token the orders service submits orders with.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from pathlib import Path

# The participant services of compose.yaml, and the database of each (its own name).
PARTICIPANTS = (
    "ledger1",
    "ledger2",
    "ledger3",
    "orders",
    "inventory",
    "payments",
    "shipping",
)
LOG_DATABASE = "txn_log"
DATABASES = (LOG_DATABASE, *PARTICIPANTS)
DB_HOST = "postgres:5432"
ADMIN_SCOPES = ["admin", "metrics", "read", "submit"]
ORDERS_SCOPES = ["read", "submit"]


def owner(database: str) -> str:
    """The login role that owns ``database`` (created by deploy/initdb.sql)."""
    return f"{database}_owner"


def new_token() -> str:
    """An API token, as ``txn token`` makes them (participants/sdk/tokens.py)."""
    return "txn_" + secrets.token_urlsafe(32)


def token_entry(name: str, token: str, scopes: list[str]) -> dict[str, object]:
    return {
        "name": name,
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
        "scopes": sorted(scopes),
    }


def secret_files() -> tuple[dict[str, str], str]:
    """(file name -> content, the admin token)."""
    files: dict[str, str] = {"postgres_password": secrets.token_hex(24)}
    for db in DATABASES:
        # Hex: nothing to URL-encode in the DSN, nothing to quote anywhere.
        password = secrets.token_hex(24)
        files[f"{db}_db_password"] = password
        files[f"{db}_dsn"] = f"postgresql://{owner(db)}:{password}@{DB_HOST}/{db}"
    participant_secrets = {}
    for name in PARTICIPANTS:
        participant_secrets[name] = files[f"{name}_secret"] = secrets.token_urlsafe(32)
    files["txn_participant_secrets"] = json.dumps(participant_secrets)
    admin, orders = new_token(), new_token()
    files["txn_api_tokens"] = json.dumps(
        [token_entry("admin", admin, ADMIN_SCOPES), token_entry("orders", orders, ORDERS_SCOPES)]
    )
    files["txnp_api_tokens"] = json.dumps([token_entry("admin", admin, ADMIN_SCOPES)])
    files["orders_coordinator_token"] = orders
    return files, admin


def write(folder: Path) -> str:
    """Write every file into ``folder`` (refusing to overwrite any); returns the admin token."""
    files, admin = secret_files()
    existing = sorted(name for name in files if (folder / name).exists())
    if existing:
        raise FileExistsError(
            f"{folder} already holds {', '.join(existing)}: not overwritten (the database "
            "passwords were set from them). To start over: docker compose down -v, then "
            f"remove {folder}"
        )
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    for name, content in files.items():
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(content + "\n")
        path.chmod(0o644)  # whatever the umask: the containers' users must read it
    return admin


def main(argv: list[str]) -> int:
    folder = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "secrets"
    try:
        admin = write(folder)
    except FileExistsError as e:
        print(f"make_secrets: {e}", file=sys.stderr)
        return 1
    print(f"secrets written to {folder}")
    print("admin API token (all scopes, coordinators and participant services); shown once,")
    print(f"kept nowhere, only its hash is: {admin}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
