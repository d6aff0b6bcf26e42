"""The payments service: customers' wallets in cents. ``POST /payments/charge`` debits a wallet
for an order and records the payment, as a 2PC prepare or a saga action (by ``Txn-Op``);
``POST /payments/charge/undo`` is the saga compensation that refunds it.

Concurrency: a charge and a refund both lock the order's payment row first and the wallet
second, so they never wait on each other in a cycle; the wallet debit is one conditional
UPDATE, so concurrent charges can never overdraw it. The SDK's barrier (same local transaction)
makes repeated calls of one branch run the business code once."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from participants.payments.schema import payments, wallets
from participants.sdk import BusinessError, Participant, ParticipantSettings
from participants.shop.catalogue import money

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
    order_id: str
    customer: str
    amount: int
    status: str


class Charge(BaseModel):
    order_id: str = Field(min_length=1, max_length=128)
    customer: str = Field(min_length=1, max_length=64)  # no wallet by that name: unknown
    amount: int = Field(gt=0, le=MAX_CENTS, strict=True)


def _payload(payload: dict[str, Any]) -> Charge:
    try:
        return Charge.model_validate(payload)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "payload"
        raise BusinessError(f"invalid charge payload: {where}: {first['msg']}") from e


# A payment of the same order that was refunded may be charged again (the order retried under a
# new transaction); one still captured refuses the second charge.
_RECORD = text(
    "INSERT INTO payments (order_id, customer, amount, status) "
    "VALUES (:order_id, :customer, :amount, 'captured') "
    "ON CONFLICT (order_id) DO UPDATE "
    "SET customer = EXCLUDED.customer, amount = EXCLUDED.amount, status = 'captured' "
    "WHERE payments.status = 'refunded' RETURNING 1"
)
_DEBIT = text(
    "UPDATE wallets SET balance = balance - :amount "
    "WHERE customer = :customer AND balance >= :amount RETURNING balance"
)
_REFUND = text(
    "UPDATE payments SET status = 'refunded' "
    "WHERE order_id = :order_id AND status = 'captured' RETURNING customer, amount"
)
_CREDIT = text(
    "UPDATE wallets SET balance = balance + :amount WHERE customer = :customer RETURNING balance"
)


async def charge(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """charge a customer's wallet for an order and record the payment as captured"""
    req = _payload(payload)
    args = {"order_id": req.order_id, "customer": req.customer, "amount": req.amount}
    if (await conn.execute(_RECORD, args)).first() is None:
        raise BusinessError(f"order {req.order_id} is already paid")
    balance = (await conn.execute(_DEBIT, args)).scalar_one_or_none()
    if balance is None:
        query = select(wallets.c.balance).where(wallets.c.customer == req.customer)
        has = (await conn.execute(query)).scalar_one_or_none()
        if has is None:
            raise BusinessError(f"unknown customer {req.customer}")
        raise BusinessError(
            f"insufficient funds: {req.customer} has {money(has)}, "
            f"the order costs {money(req.amount)}"
        )
    # A refusal above raises: the SDK rolls the payment row back with everything else.
    return {"order_id": req.order_id, "customer": req.customer, "balance": balance}


async def refund(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """refund an order's captured payment to the wallet (nothing captured: nothing to do)"""
    req = _payload(payload)
    paid = (await conn.execute(_REFUND, {"order_id": req.order_id})).first()
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
            rows = await conn.execute(select(payments).order_by(payments.c.order_id))
            return [
                Payment(order_id=r.order_id, customer=r.customer, amount=r.amount, status=r.status)
                for r in rows
            ]

    return app
