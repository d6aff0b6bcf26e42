"""The inventory service: stock per SKU of the shop's catalogue. ``POST /stock/reserve`` moves an
order's items from available to reserved, as a 2PC prepare or a saga action (by ``Txn-Op``);
``POST /stock/reserve/undo`` is the saga compensation that releases them again.

Each reservation row records the branch that made it, ``current_branch()`` = (gid, branch): the
release undoes exactly its own branch's rows, never another transaction's reservation of the
same order id (a saga reusing a confirmed order's id must not free that order's stock).

Concurrency: every change locks the stock rows it touches one at a time in sorted SKU order, and
only then the reservation rows, so two calls never wait on each other in a cycle. The SDK's
barrier (same local transaction) makes repeated calls of one branch run the business code
once."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from participants.inventory.schema import reservations, stock
from participants.sdk import BusinessError, Participant, ParticipantSettings, current_branch
from participants.shop.catalogue import PRODUCTS

MAX_QTY = 2**31 - 1  # the stock columns are 32-bit integers


class InventorySettings(ParticipantSettings):
    """The SDK's settings (``TXNP_*``); only the default name differs."""

    name: str = "inventory"


class NewStock(BaseModel):
    sku: str
    available: int = Field(ge=0, le=MAX_QTY)

    @field_validator("sku")
    @classmethod
    def _in_catalogue(cls, sku: str) -> str:
        if sku not in PRODUCTS:
            raise ValueError(f"{sku} is not in the shop's catalogue")
        return sku


class StockItem(BaseModel):
    sku: str
    name: str | None
    price: int | None  # cents; None for a row whose SKU left the catalogue
    available: int
    reserved: int


class ReservationRow(BaseModel):
    gid: str
    branch: int
    order_id: str
    sku: str
    qty: int
    status: str


class Item(BaseModel):
    sku: str = Field(min_length=1, max_length=64)
    qty: int = Field(gt=0, le=MAX_QTY, strict=True)


class Reserve(BaseModel):
    order_id: str = Field(min_length=1, max_length=128)
    items: list[Item] = Field(min_length=1)


def _payload(payload: dict[str, Any]) -> Reserve:
    try:
        return Reserve.model_validate(payload)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "payload"
        raise BusinessError(f"invalid reservation payload: {where}: {first['msg']}") from e


def _stock_item(row: Any) -> StockItem:
    product = PRODUCTS.get(row.sku)
    return StockItem(
        sku=row.sku,
        name=product.name if product else None,
        price=product.price if product else None,
        available=row.available,
        reserved=row.reserved,
    )


_LOCK_STOCK = text("SELECT available FROM stock WHERE sku = :sku FOR UPDATE")
_TAKE = text(
    "UPDATE stock SET available = available - :qty, reserved = reserved + :qty WHERE sku = :sku"
)
_GIVE_BACK = text(
    "UPDATE stock SET available = available + :qty, reserved = reserved - :qty WHERE sku = :sku"
)
# One live reservation per order and SKU (the partial unique index): a second one is refused;
# after a release the order may reserve again (retried under a new transaction), as a new row.
_HOLD = text(
    "INSERT INTO reservations (gid, branch, order_id, sku, qty, status) "
    "VALUES (:gid, :branch, :order_id, :sku, :qty, 'reserved') "
    "ON CONFLICT (order_id, sku) WHERE status = 'reserved' DO NOTHING RETURNING 1"
)
_HELD = text(
    "SELECT sku FROM reservations WHERE gid = :gid AND branch = :branch AND status = 'reserved'"
)
_RELEASE = text(
    "UPDATE reservations SET status = 'released' WHERE gid = :gid AND branch = :branch "
    "AND sku = :sku AND status = 'reserved' RETURNING qty"
)


async def reserve(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """reserve an order's items: move their quantities from available to reserved"""
    req = _payload(payload)
    gid, branch = current_branch()
    wanted: dict[str, int] = {}
    for item in req.items:  # the same SKU on two lines is one reservation of both
        wanted[item.sku] = wanted.get(item.sku, 0) + item.qty
    done = []
    for sku in sorted(wanted):  # one lock order for every call: no deadlock between two
        qty = wanted[sku]
        available = (await conn.execute(_LOCK_STOCK, {"sku": sku})).scalar_one_or_none()
        if available is None:
            raise BusinessError(f"unknown SKU {sku}")
        if available < qty:
            raise BusinessError(f"only {available} left of {sku}")
        await conn.execute(_TAKE, {"sku": sku, "qty": qty})
        row = {"gid": gid, "branch": branch, "order_id": req.order_id, "sku": sku, "qty": qty}
        held = await conn.execute(_HOLD, row)
        if held.first() is None:
            raise BusinessError(f"order {req.order_id} already holds a reservation of {sku}")
        done.append({"sku": sku, "qty": qty})
    # A refusal above raises before returning: the SDK rolls back everything applied so far.
    return {"order_id": req.order_id, "reserved": done}


async def release(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """release what this branch reserved back to available (nothing reserved: nothing to do)"""
    req = _payload(payload)
    gid, branch = current_branch()
    mine = {"gid": gid, "branch": branch}
    held = (await conn.execute(_HELD, mine)).scalars().all()
    done = []
    for sku in sorted(held):  # the reserve's lock order: stock row, then the reservation
        await conn.execute(_LOCK_STOCK, {"sku": sku})
        key = {**mine, "sku": sku}
        qty = (await conn.execute(_RELEASE, key)).scalar_one_or_none()
        if qty is None:  # released by another call meanwhile
            continue
        await conn.execute(_GIVE_BACK, {"sku": sku, "qty": qty})
        done.append({"sku": sku, "qty": qty})
    return {"order_id": req.order_id, "released": done}


def create_app(settings: ParticipantSettings | None = None) -> FastAPI:
    sdk = Participant(settings or InventorySettings())
    sdk.twopc("/stock/reserve")(reserve)
    sdk.action("/stock/reserve", compensation="/stock/reserve/undo")(reserve)
    sdk.compensation("/stock/reserve/undo")(release)
    app = FastAPI(title=f"inventory ({sdk.settings.name})", lifespan=sdk.lifespan)
    sdk.mount(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/stock", status_code=201)
    async def seed_stock(body: NewStock) -> StockItem:
        async with sdk.engine.begin() as conn:
            stmt = insert(stock).values(sku=body.sku, available=body.available, reserved=0)
            done = await conn.execute(stmt.on_conflict_do_nothing().returning(stock))
            row = done.first()
            if row is None:
                raise HTTPException(409, detail=f"{body.sku} is already stocked")
        return _stock_item(row)

    @app.get("/stock")
    async def list_stock() -> list[StockItem]:
        async with sdk.engine.connect() as conn:
            rows = (await conn.execute(select(stock))).all()
        order = {sku: i for i, sku in enumerate(PRODUCTS)}  # the catalogue's order
        ranked = sorted(rows, key=lambda r: (order.get(r.sku, len(order)), r.sku))
        return [_stock_item(r) for r in ranked]

    @app.get("/reservations")
    async def list_reservations() -> list[ReservationRow]:
        async with sdk.engine.connect() as conn:
            c = reservations.c
            query = select(reservations).order_by(c.order_id, c.sku, c.gid, c.branch)
            return [ReservationRow.model_validate(r._asdict()) for r in await conn.execute(query)]

    return app
