"""The orders service. ``POST /orders`` records a pending order (committed locally first), hands
it to a coordinator, as a 2PC transaction (inventory, payments and this service's own
``/orders/confirm`` branch) or as the ``place_order`` saga, and applies the logged outcome.
``GET /orders/{id}`` settles a still-pending order by asking the coordinator again.

The coordinator client is injected (``create_app(settings, coordinator=...)``): anything with
``submit(body, wait)`` and ``get(gid)`` answering a ``Reply``; by default
:class:`ClientCoordinator`, the project's client library (``txn_client``) over
``settings.coordinators``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

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
from txn_client import NO_RETRIES, Aborted, AsyncClient, Transaction, TxnError

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


class Coordinator(Protocol):
    async def submit(self, body: dict[str, Any], wait: float) -> Reply: ...

    async def get(self, gid: str) -> Reply: ...


class ClientCoordinator:
    """The coordinators through ``txn_client``: the next one on no connection or a 502/503/504,
    in one pass and without retries. A submission that got no answer leaves its order pending,
    and the reconciler settles it (asking again is safe: the gid is the order's)."""

    def __init__(self, urls: list[str], timeout_s: float, token: str = "") -> None:
        self.client = (
            AsyncClient(
                urls, token or None, timeout_s=timeout_s, retries=NO_RETRIES, connections=64
            )
            if urls
            else None
        )

    async def submit(self, body: dict[str, Any], wait: float) -> Reply:
        return await self._reply(lambda c: c.submit(body, wait=wait))

    async def get(self, gid: str) -> Reply:
        return await self._reply(lambda c: c.get(gid, events=False))

    async def _reply(self, call: Callable[[AsyncClient], Awaitable[Transaction]]) -> Reply:
        if self.client is None:
            return Reply(None, error="no coordinator configured")
        try:
            txn: Transaction = await call(self.client)
        except Aborted as e:
            txn = e.transaction
        except TxnError as e:
            return Reply(e.status or None, e.problem or None, error=str(e))
        return Reply(201 if txn.created else 200, txn.raw)

    async def close(self) -> None:
        if self.client is not None:
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
        owned = ClientCoordinator(
            settings.coordinators,
            settings.coordinator_timeout_s,
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
            reply = await ask.get(row.gid)
            if reply.status == 404 and float(row.age_s) < settings.unknown_after_s:
                # It never reached a coordinator (none answered when it was placed): submit it
                # now. Safe to repeat: the same gid with the same body is idempotent.
                async with sdk.engine.connect() as conn:
                    order = await load_order(conn, row.id)
                if order is not None and order.status == "pending":
                    reply = await ask.submit(transaction_for(order), 0)
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
        reply = await ask.submit(transaction_for(order), settings.submit_wait_s)
        return await settle(order_id, reply, None)

    @app.get("/orders/{order_id}")
    async def get_order(order_id: str) -> Order:
        async with sdk.engine.connect() as conn:
            order = await load_order(conn, order_id)
        if order is None:
            raise HTTPException(404, detail=f"no order {order_id}")
        if order.status != "pending":
            return order
        reply = await ask.get(order.gid)
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
