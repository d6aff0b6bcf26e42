"""The orders service. ``POST /orders`` records a pending order (committed locally first), hands
it to a coordinator, as a 2PC transaction (inventory, payments and this service's own
``/orders/confirm`` branch) or as the ``place_order`` saga, and applies the logged outcome.
``GET /orders/{id}`` settles a still-pending order by asking the coordinator again.

The coordinator client is injected (``create_app(settings, coordinator=...)``): any async
``(method, path, json body) -> Reply``; by default :class:`HttpCoordinator` over
``settings.coordinators``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from participants.orders.schema import orders
from participants.sdk import BusinessError, Participant, ParticipantSettings
from participants.sdk.base import sqlstate
from participants.shop.catalogue import PRODUCTS, price_of
from txn_client.http11 import Client, ConnectFailed, HttpError, NoReply

log = logging.getLogger(__name__)

NEVER_REACHED = "never reached the coordinator"
ABORTED = "the transaction was aborted"
_LOCK_NOT_AVAILABLE = "55P03"


class OrdersSettings(ParticipantSettings):
    """The SDK's settings (``TXNP_*``; ``coordinators`` is where orders are submitted) plus the
    order service's own."""

    name: str = "orders"
    submit_wait_s: float = Field(
        30.0, ge=0, le=300, description="How long a submission waits for the outcome."
    )
    coordinator_timeout_s: float = Field(
        10.0, gt=0, description="Allowance beyond submit_wait_s for a coordinator's answer."
    )
    unknown_after_s: float = Field(
        60.0,
        ge=0,
        description="A pending order the coordinator does not know after this long is cancelled.",
    )
    reconcile_interval_s: float = Field(
        5.0, gt=0, description="How often pending orders are settled by asking the coordinator."
    )
    coordinator_token: SecretStr = Field(
        SecretStr(""),
        description="The API token (scopes submit, read) orders are submitted to the "
        "coordinator with.",
    )


# -- the coordinator client ----------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A coordinator's answer: HTTP status and JSON body; ``status`` None when none answered."""

    status: int | None
    body: dict[str, Any] | None = None
    error: str | None = None


# A coordinator's answer is a transaction's view: far below this.
MAX_REPLY_BYTES = 1024 * 1024

# (method, path with query, JSON body or None) -> Reply
Coordinator = Callable[[str, str, dict[str, Any] | None], Awaitable[Reply]]


class HttpCoordinator:
    """Asks the coordinators in turn: the next one on a connection error or a 502/503/504.
    A coordinator that accepted the request but did not answer in time ends the attempt
    (``Reply(None)``): the order stays pending and a later GET settles it."""

    def __init__(
        self, urls: list[str], timeout_s: float, connect_timeout_s: float = 3.0, token: str = ""
    ) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.client = Client(
            limit=64, cap=MAX_REPLY_BYTES, headers=self.headers, connect_timeout_s=connect_timeout_s
        )

    async def __call__(self, method: str, path: str, body: dict[str, Any] | None) -> Reply:
        last = Reply(None, error="no coordinator configured")
        for base in self.urls:
            try:
                answer = await self.client.call(method, base + path, self.timeout_s, json=body)
            except ConnectFailed as e:
                last = Reply(None, error=f"{base}: cannot connect: {e}")
                continue
            except NoReply:
                return Reply(None, error=f"{base}: no answer within {self.timeout_s}s")
            except HttpError as e:
                # Connection lost, even mid-answer: asking again (here or at the next
                # coordinator) is safe, since a resubmitted gid with the same body is idempotent.
                last = Reply(None, error=f"{base}: {e}")
                continue
            data = answer.json()
            reply = Reply(answer.status, data if isinstance(data, dict) else None)
            if reply.status in (502, 503, 504):
                last = reply
                continue
            return reply
        return last

    async def close(self) -> None:
        await self.client.close()


# -- models ----------------------------------------------------------------------------------


class NewItem(BaseModel):
    sku: str
    qty: int = Field(ge=1, le=100)

    @field_validator("sku")
    @classmethod
    def _known(cls, sku: str) -> str:
        if sku not in PRODUCTS:
            raise ValueError(f"unknown SKU {sku!r}; the catalogue has {', '.join(PRODUCTS)}")
        return sku


class NewOrder(BaseModel):
    customer: str = Field(min_length=1, max_length=64)
    items: list[NewItem] = Field(min_length=1, max_length=20)
    destination: str = Field(min_length=1, max_length=128)
    mode: Literal["2pc", "saga"]


class Item(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    id: str
    customer: str
    items: list[Item]
    destination: str
    mode: str
    total: int
    status: Literal["pending", "confirmed", "cancelled"]
    reason: str | None
    gid: str


class Confirm(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)


def _order(row: Row[Any]) -> Order:
    return Order.model_validate({k: v for k, v in row._asdict().items() if k in Order.model_fields})


async def load_order(conn: AsyncConnection, order_id: str) -> Order | None:
    row = (await conn.execute(select(orders).where(orders.c.id == order_id))).first()
    return None if row is None else _order(row)


def txn_path(gid: str) -> str:
    """The coordinator's URL path of one transaction: the gid as one encoded path segment."""
    return f"/v1/transactions/{quote(gid, safe='')}?events=false"


def transaction_for(order: Order) -> dict[str, Any]:
    """The coordinator request placing ``order``: 2PC branches or the ``place_order`` saga."""
    items = [i.model_dump() for i in order.items]
    if order.mode == "2pc":
        return {
            "gid": order.gid,
            "mode": "2pc",
            "branches": [
                {
                    "participant": "inventory",
                    "action": "/stock/reserve",
                    "payload": {"order_id": order.id, "items": items},
                },
                {
                    "participant": "payments",
                    "action": "/payments/charge",
                    # Items, not the total: payments prices them from the catalogue itself.
                    "payload": {"order_id": order.id, "customer": order.customer, "items": items},
                },
                {
                    "participant": "orders",
                    "action": "/orders/confirm",
                    "payload": {"order_id": order.id},
                },
            ],
        }
    return {
        "gid": order.gid,
        "saga": "place_order",
        "input": {
            "order_id": order.id,
            "customer": order.customer,
            "items": items,
            "destination": order.destination,
        },
    }


# -- the outcome -----------------------------------------------------------------------------


def outcome_of(reply: Reply, unknown_after_s: float | None) -> tuple[str, str | None] | None:
    """The (status, reason) a coordinator's reply settles a pending order to, or None.
    A 404 counts only where ``unknown_after_s`` is given (asking about an existing order)."""
    if reply.status in (200, 201) and reply.body is not None:
        status = reply.body.get("status")
        if status == "committed":
            return "confirmed", None
        if status == "aborted":
            reason = reply.body.get("reason")
            return "cancelled", reason if isinstance(reason, str) and reason else ABORTED
        return None
    if reply.status == 404 and unknown_after_s is not None:
        return "cancelled", NEVER_REACHED
    if reply.status == 422:
        # The coordinator refused the submission: nothing was logged, nothing can happen.
        detail = reply.body.get("detail") if reply.body is not None else None
        return "cancelled", f"refused by the coordinator: {detail}"
    return None


async def apply_outcome(
    engine: AsyncEngine,
    order_id: str,
    reply: Reply,
    *,
    unknown_after_s: float | None = None,
    lock_timeout_ms: int = 2000,
) -> Order | None:
    """Apply a coordinator's reply about ``order_id``'s transaction and return the order as it
    now is (None: no such order). Only a pending order changes: ``committed`` → confirmed (a
    2PC order's own branch did it already), ``aborted`` → cancelled with the transaction's
    reason; with ``unknown_after_s``, a 404 on an order at least that old → cancelled, never
    having reached the coordinator. Anything else leaves it pending."""
    settled = outcome_of(reply, unknown_after_s)
    if settled is None and reply.status not in (200, 201, 404):
        log.warning("order %s stays pending: coordinator said %s", order_id, reply)
    if settled is not None:
        status, reason = settled
        stmt = (
            update(orders)
            .where(orders.c.id == order_id, orders.c.status == "pending")
            .values(status=status, reason=reason)
        )
        if reply.status == 404:
            stmt = stmt.where(
                text("created_at <= now() - make_interval(secs => :age)").bindparams(
                    age=unknown_after_s
                )
            )
        try:
            async with engine.begin() as conn:
                # A 2PC branch of this order still prepared holds the row: do not wait on it.
                await conn.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
                await conn.execute(stmt)
        except DBAPIError as e:
            if sqlstate(e) != _LOCK_NOT_AVAILABLE:
                raise
            log.warning("order %s stays pending: its row is locked", order_id)
    async with engine.connect() as conn:
        return await load_order(conn, order_id)


# -- the 2PC branch --------------------------------------------------------------------------


async def confirm_order(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """confirm a pending order"""
    try:
        req = Confirm.model_validate(payload)
    except ValidationError as e:
        raise BusinessError(f"invalid confirm payload: {e.errors()[0]['msg']}") from e
    stmt = (
        update(orders)
        .where(orders.c.id == req.order_id, orders.c.status == "pending")
        .values(status="confirmed", reason=None)
        .returning(orders.c.id)
    )
    if (await conn.execute(stmt)).first() is None:
        found = (await conn.execute(select(orders.c.id).where(orders.c.id == req.order_id))).first()
        if found is None:
            raise BusinessError(f"order {req.order_id} does not exist")
        raise BusinessError(f"order {req.order_id} is not pending")
    return {"order_id": req.order_id, "status": "confirmed"}


# -- the app ---------------------------------------------------------------------------------


def create_app(
    settings: OrdersSettings | None = None, coordinator: Coordinator | None = None
) -> FastAPI:
    settings = settings or OrdersSettings()
    sdk = Participant(settings)
    sdk.twopc("/orders/confirm")(confirm_order)
    owned = None
    if coordinator is None:
        owned = HttpCoordinator(
            settings.coordinators,
            settings.submit_wait_s + settings.coordinator_timeout_s,
            token=settings.coordinator_token.get_secret_value(),
        )
        coordinator = owned
    ask: Coordinator = coordinator

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with sdk.lifespan(app):
            reconciler = asyncio.create_task(reconcile_forever(), name="order-reconciler")
            try:
                yield
            finally:
                reconciler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reconciler
                if owned is not None:
                    await owned.close()

    async def reconcile_once() -> int:
        """Settle orders left pending (their submission's answer was lost: a coordinator
        restarted, a timeout) by asking the coordinator what became of them."""
        age = func.now() - orders.c.created_at
        stale = (
            select(orders.c.id, orders.c.gid, func.extract("epoch", age).label("age_s"))
            .where(orders.c.status == "pending", age > text("interval '2 seconds'"))
            .order_by(orders.c.created_at)
            .limit(100)
        )
        async with sdk.engine.connect() as conn:
            pending = list(await conn.execute(stale))
        for row in pending:
            reply = await ask("GET", txn_path(row.gid), None)
            if reply.status == 404 and float(row.age_s) < settings.unknown_after_s:
                # It never reached a coordinator (none answered when it was placed): submit it
                # now. Safe to repeat: the same gid with the same body is idempotent.
                async with sdk.engine.connect() as conn:
                    order = await load_order(conn, row.id)
                if order is not None and order.status == "pending":
                    reply = await ask("POST", "/v1/transactions?wait=0", transaction_for(order))
                    log.warning("order %s resubmitted: %s", row.id, reply.status)
                continue
            await settle(row.id, reply, settings.unknown_after_s)
        return len(pending)

    async def reconcile_forever() -> None:
        while True:
            await asyncio.sleep(settings.reconcile_interval_s)
            try:
                await reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciling pending orders failed; trying again later")

    app = FastAPI(title=f"orders ({settings.name})", lifespan=lifespan)
    app.state.reconcile_once = reconcile_once
    sdk.mount(app)

    async def settle(order_id: str, reply: Reply, unknown_after_s: float | None) -> Order:
        order = await apply_outcome(
            sdk.engine,
            order_id,
            reply,
            unknown_after_s=unknown_after_s,
            lock_timeout_ms=settings.lock_timeout_ms,
        )
        if order is None:
            raise HTTPException(404, detail=f"no order {order_id}")
        return order

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/orders", status_code=201)
    async def place_order(body: NewOrder) -> Order:
        order_id = uuid.uuid4().hex
        order = Order(
            id=order_id,
            customer=body.customer,
            items=[Item(sku=i.sku, qty=i.qty) for i in body.items],
            destination=body.destination,
            mode=body.mode,
            total=price_of([(i.sku, i.qty) for i in body.items]),
            status="pending",
            reason=None,
            gid=f"order-{order_id}",
        )
        async with sdk.engine.begin() as conn:
            await conn.execute(orders.insert().values(**order.model_dump()))
        path = f"/v1/transactions?wait={settings.submit_wait_s:g}"
        reply = await ask("POST", path, transaction_for(order))
        return await settle(order_id, reply, None)

    @app.get("/orders/{order_id}")
    async def get_order(order_id: str) -> Order:
        async with sdk.engine.connect() as conn:
            order = await load_order(conn, order_id)
        if order is None:
            raise HTTPException(404, detail=f"no order {order_id}")
        if order.status != "pending":
            return order
        reply = await ask("GET", txn_path(order.gid), None)
        return await settle(order_id, reply, settings.unknown_after_s)

    @app.get("/orders")
    async def list_orders(
        status: Literal["pending", "confirmed", "cancelled"] | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[Order]:
        query = select(orders).order_by(orders.c.created_at.desc(), orders.c.id).limit(limit)
        if status is not None:
            query = query.where(orders.c.status == status)
        async with sdk.engine.connect() as conn:
            return [_order(r) for r in await conn.execute(query)]

    return app
