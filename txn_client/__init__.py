"""A Python client of the transaction coordinator's REST API, blocking (``Client``) and asyncio
(``AsyncClient``), with builders of submissions and typed errors (docs/client.md).

It depends on nothing else of this project (installable alone): tenacity, orjson and httptools.
``txn_client.http11`` is also the HTTP/1.1 client the coordinator and the participants use.
"""

from txn_client._core import NO_RETRIES, Retries
from txn_client.aio import AsyncClient
from txn_client.builders import NamedSaga, RetryPolicy, Saga, Step, Tcc, TwoPhase, new_gid
from txn_client.errors import (
    Aborted,
    Conflict,
    FieldError,
    Invalid,
    NotFound,
    TxnError,
    Unauthorised,
    Unavailable,
)
from txn_client.results import Branch, Event, Page, Transaction
from txn_client.sync import Client

__all__ = [
    "NO_RETRIES",
    "Aborted",
    "AsyncClient",
    "Branch",
    "Client",
    "Conflict",
    "Event",
    "FieldError",
    "Invalid",
    "NamedSaga",
    "NotFound",
    "Page",
    "Retries",
    "RetryPolicy",
    "Saga",
    "Step",
    "Tcc",
    "Transaction",
    "TwoPhase",
    "TxnError",
    "Unauthorised",
    "Unavailable",
    "new_gid",
]
