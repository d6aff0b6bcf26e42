"""The payments service: customers' wallets in cents. ``POST /payments/charge`` debits a wallet
for an order and records the payment, as a 2PC prepare or a saga action (by ``Txn-Op``);
``POST /payments/charge/undo`` is the saga compensation that refunds it.

The charge's payload carries the order's items, never an amount: the amount is priced here from
the shop's catalogue (``participants.shop.catalogue``, which the inventory serves), so no client
can set what it pays.

Each payment row records the branch that made it, ``current_branch()`` = (gid, branch): the
refund undoes exactly that payment, never another transaction's payment of the same order id.

Concurrency: a charge and a refund both lock the payment row first and the wallet
second, so they never wait on each other in a cycle; the wallet debit is one conditional
UPDATE, so concurrent charges can never overdraw it. The SDK's barrier (same local transaction)
makes repeated calls of one branch run the business code once."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from participants.payments.schema import payments, wallets
from participants.sdk import BusinessError, Participant, ParticipantSettings, current_branch
from participants.shop.catalogue import PRODUCTS, money, price_of

CUSTOMER = r"^[A-Za-z0-9._:-]{1,64}$"
MAX_CENTS = 2**62


class PaymentsSettings(ParticipantSettings):
    """The SDK's settings (``TXNP_*``); only the default name differs."""

    name: str = "payments"


class NewWallet(BaseModel):
    customer: str = Field(pattern=CUSTOMER)
    balance: int = Field(ge=0, le=MAX_CENTS)


class Wallet(BaseModel):
    customer: str
    balance: int


class Payment(BaseModel):
    gid: str
    branch: int
    order_id: str
    customer: str
    amount: int
    status: str


class Item(BaseModel):
    sku: str = Field(min_length=1, max_length=64)
    qty: int = Field(gt=0, le=2**31 - 1, strict=True)


class Charge(BaseModel):
    # An ``amount`` (or anything else unexpected) in the payload is refused, never trusted.
    model_config = ConfigDict(extra="forbid")

    order_id: str = Field(min_length=1, max_length=128)
    customer: str = Field(min_length=1, max_length=64)  # no wallet by that name: unknown
    items: list[Item] = Field(min_length=1, max_length=100)

    def amount(self) -> int:
        """The order's total in cents at the catalogue's prices."""
        for item in self.items:
            if item.sku not in PRODUCTS:
                raise BusinessError(f"unknown SKU {item.sku}")
        total = price_of([(i.sku, i.qty) for i in self.items])
        if total > MAX_CENTS:
            raise BusinessError(f"the order costs more than {money(MAX_CENTS)}")
        return total


def _payload(payload: dict[str, Any]) -> Charge:
    try:
        return Charge.model_validate(payload)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "payload"
        raise BusinessError(f"invalid charge payload: {where}: {first['msg']}") from e


# One captured payment per order (the partial unique index): a second charge is refused; after
# a refund the order may be charged again (retried under a new transaction), as a new row.
_RECORD = text(
    "INSERT INTO payments (gid, branch, order_id, customer, amount, status) "
    "VALUES (:gid, :branch, :order_id, :customer, :amount, 'captured') "
    "ON CONFLICT (order_id) WHERE status = 'captured' DO NOTHING RETURNING 1"
)
_DEBIT = text(
    "UPDATE wallets SET balance = balance - :amount "
    "WHERE customer = :customer AND balance >= :amount RETURNING balance"
)
_REFUND = text(
    "UPDATE payments SET status = 'refunded' "
    "WHERE gid = :gid AND branch = :branch AND status = 'captured' RETURNING customer, amount"
)
_CREDIT = text(
    "UPDATE wallets SET balance = balance + :amount WHERE customer = :customer RETURNING balance"
)


async def charge(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """charge a customer's wallet for an order and record the payment as captured"""
    req = _payload(payload)
    gid, branch = current_branch()
    amount = req.amount()
    args = {"gid": gid, "branch": branch, "order_id": req.order_id}
    args |= {"customer": req.customer, "amount": amount}
    if (await conn.execute(_RECORD, args)).first() is None:
        raise BusinessError(f"order {req.order_id} is already paid")
    balance = (await conn.execute(_DEBIT, args)).scalar_one_or_none()
    if balance is None:
        query = select(wallets.c.balance).where(wallets.c.customer == req.customer)
        has = (await conn.execute(query)).scalar_one_or_none()
        if has is None:
            raise BusinessError(f"unknown customer {req.customer}")
        raise BusinessError(
            f"insufficient funds: {req.customer} has {money(has)}, the order costs {money(amount)}"
        )
    # A refusal above raises: the SDK rolls the payment row back with everything else.
    return {
        "order_id": req.order_id,
        "customer": req.customer,
        "amount": amount,
        "balance": balance,
    }


async def refund(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """refund this branch's captured payment to the wallet (nothing captured: nothing to do)"""
    req = _payload(payload)
    gid, branch = current_branch()
    paid = (await conn.execute(_REFUND, {"gid": gid, "branch": branch})).first()
    if paid is None:
        return {"order_id": req.order_id, "refunded": 0}
    credit = {"customer": paid.customer, "amount": paid.amount}
    balance = (await conn.execute(_CREDIT, credit)).scalar_one_or_none()
    if balance is None:  # wallets are never deleted; refuse rather than lose the money
        raise BusinessError(f"cannot refund order {req.order_id}: {paid.customer} has no wallet")
    return {
        "order_id": req.order_id,
        "customer": paid.customer,
        "refunded": paid.amount,
        "balance": balance,
    }


def create_app(settings: ParticipantSettings | None = None) -> FastAPI:
    sdk = Participant(settings or PaymentsSettings())
    sdk.twopc("/payments/charge")(charge)
    sdk.action("/payments/charge", compensation="/payments/charge/undo")(charge)
    sdk.compensation("/payments/charge/undo")(refund)
    app = FastAPI(title=f"payments ({sdk.settings.name})", lifespan=sdk.lifespan)
    sdk.mount(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/wallets", status_code=201)
    async def create_wallet(body: NewWallet) -> Wallet:
        async with sdk.engine.begin() as conn:
            stmt = insert(wallets).values(customer=body.customer, balance=body.balance)
            done = await conn.execute(stmt.on_conflict_do_nothing().returning(wallets.c.customer))
            if done.first() is None:
                raise HTTPException(409, detail=f"{body.customer} already has a wallet")
        return Wallet(customer=body.customer, balance=body.balance)

    @app.get("/wallets")
    async def list_wallets() -> list[Wallet]:
        async with sdk.engine.connect() as conn:
            rows = await conn.execute(select(wallets).order_by(wallets.c.customer))
            return [Wallet(customer=r.customer, balance=r.balance) for r in rows]

    @app.get("/payments")
    async def list_payments() -> list[Payment]:
        async with sdk.engine.connect() as conn:
            c = payments.c
            rows = await conn.execute(select(payments).order_by(c.order_id, c.gid, c.branch))
            return [Payment.model_validate(r._asdict()) for r in rows]

    return app
