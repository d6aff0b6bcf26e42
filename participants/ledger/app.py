"""The ledger service: accounts with non-negative balances. ``POST /accounts/adjust`` adds a
delta, as a 2PC prepare or a saga action (by ``Txn-Op``); ``POST /accounts/adjust/undo`` is the
saga compensation that takes the same delta back.

TCC: ``POST /tcc/adjust`` (try) freezes a debit's amount (``frozen``: held, no longer available
to anything else, still in the balance); ``/tcc/adjust/confirm`` applies the delta and unfreezes
it; ``/tcc/adjust/cancel`` unfreezes it. A credit freezes nothing: its try only checks the
account, its confirm credits it, its cancel has nothing to release. Every change is guarded by
the balance that is available, ``balance - frozen``. Idempotence is the SDK's barrier's: the
handlers keep no state of their own about the calls."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from participants.ledger.schema import accounts
from participants.sdk import BusinessError, Participant, ParticipantSettings
from participants.sdk.oneshot import Statement
from participants.sdk.strict import Integer

ACCOUNT_ID = r"^[A-Za-z0-9._:-]{1,64}$"


class LedgerSettings(ParticipantSettings):
    """The SDK's settings (``TXNP_*``); only the default name differs."""

    name: str = "ledger"


class NewAccount(BaseModel):
    # Strict, as its OpenAPI schema says: the balance is a JSON number, not a string or boolean.
    model_config = ConfigDict(strict=True)

    id: str = Field(pattern=ACCOUNT_ID)
    balance: Integer = Field(ge=0, le=2**62)


class Account(BaseModel):
    id: str
    balance: int
    frozen: int = 0  # held by TCC tries: the available balance is balance - frozen


class Adjust(BaseModel):
    account: str = Field(pattern=ACCOUNT_ID)
    delta: int = Field(ge=-(2**62), le=2**62)


_ADJUST = text(
    "UPDATE accounts SET balance = balance + :delta "
    "WHERE id = :account AND balance - frozen + :delta >= 0 RETURNING balance"
)
_FREEZE = text(
    "UPDATE accounts SET frozen = frozen + :amount "
    "WHERE id = :account AND balance - frozen >= :amount RETURNING frozen"
)
# Spend (confirm) or release (cancel) what a try froze; a credit's confirm has nothing frozen.
_SPEND = text(
    "UPDATE accounts SET balance = balance + :delta, frozen = frozen - :frozen "
    "WHERE id = :account AND frozen >= :frozen RETURNING balance"
)
_AVAILABLE = text("SELECT balance - frozen AS available, frozen FROM accounts WHERE id = :account")


def _payload(payload: dict[str, Any]) -> Adjust:
    try:
        return Adjust.model_validate(payload)
    except ValidationError as e:
        raise BusinessError(f"invalid adjust payload: {e.errors()[0]['msg']}") from e


async def _apply(conn: AsyncConnection, account: str, delta: int, doing: str) -> dict[str, Any]:
    # The answer names the change, not the balance: a prepared balance is not yet anyone's.
    row = (await conn.execute(_ADJUST, {"delta": delta, "account": account})).first()
    if row is not None:
        return {"account": account, "delta": delta}
    raise BusinessError(f"{await _has(conn, account)}; {doing} would make it negative")


async def _has(conn: AsyncConnection, account: str) -> str:
    """What ``account`` has available, for a refusal (BusinessError if it does not exist)."""
    row = (await conn.execute(_AVAILABLE, {"account": account})).first()
    if row is None:
        raise BusinessError(f"account {account} does not exist")
    held = f" ({row.frozen} frozen)" if row.frozen else ""
    return f"account {account} has {row.available}{held}"


async def adjust(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """add delta to an account's balance"""
    req = _payload(payload)
    return await _apply(conn, req.account, req.delta, f"adding {req.delta}")


async def undo_adjust(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """take an adjust's delta back (refused while that would make the balance negative)"""
    req = _payload(payload)
    return await _apply(conn, req.account, -req.delta, f"undoing {req.delta:+d}")


async def tcc_try_adjust(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """freeze a debit's amount (a credit: check the account)"""
    req = _payload(payload)
    amount = max(-req.delta, 0)
    if amount == 0:
        await _has(conn, req.account)  # a credit needs nothing frozen, only the account
        return {"account": req.account, "delta": req.delta, "frozen": 0}
    row = (await conn.execute(_FREEZE, {"amount": amount, "account": req.account})).first()
    if row is None:
        raise BusinessError(f"{await _has(conn, req.account)}; cannot freeze {amount}")
    return {"account": req.account, "delta": req.delta, "frozen": amount}


async def tcc_confirm_adjust(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """apply the delta, spending what the try froze"""
    req = _payload(payload)
    return await _spend(conn, req, req.delta)


async def tcc_cancel_adjust(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """release what the try froze"""
    req = _payload(payload)
    return await _spend(conn, req, 0)


async def _spend(conn: AsyncConnection, req: Adjust, delta: int) -> dict[str, Any]:
    frozen = max(-req.delta, 0)
    values = {"delta": delta, "frozen": frozen, "account": req.account}
    if (await conn.execute(_SPEND, values)).first() is None:
        # Not reached through the barrier (the try froze it): a BusinessError is retried.
        raise BusinessError(f"{await _has(conn, req.account)}; {frozen} is not frozen")
    return {"account": req.account, "delta": delta, "released": frozen}


def adjust_statement(payload: dict[str, Any]) -> Statement | None:
    """``adjust`` as one statement, for the one-round-trip path; None for a payload the
    handler must judge (it then explains the refusal)."""
    try:
        req = Adjust.model_validate(payload)
    except ValidationError:
        return None
    return Statement(
        "UPDATE accounts SET balance = balance + {delta} "
        "WHERE id = {account} AND balance - frozen + {delta} >= 0 RETURNING 1",
        {"delta": req.delta, "account": req.account},
        result={"account": req.account, "delta": req.delta},
    )


def create_app(settings: ParticipantSettings | None = None) -> FastAPI:
    sdk = Participant(settings or LedgerSettings())
    sdk.twopc("/accounts/adjust", one_shot=adjust_statement)(adjust)
    sdk.action("/accounts/adjust", compensation="/accounts/adjust/undo", one_shot=adjust_statement)(
        adjust
    )
    sdk.compensation("/accounts/adjust/undo")(undo_adjust)
    sdk.tcc_try("/tcc/adjust", confirm="/tcc/adjust/confirm", cancel="/tcc/adjust/cancel")(
        tcc_try_adjust
    )
    sdk.tcc_confirm("/tcc/adjust/confirm")(tcc_confirm_adjust)
    sdk.tcc_cancel("/tcc/adjust/cancel")(tcc_cancel_adjust)
    app = FastAPI(title=f"ledger ({sdk.settings.name})", lifespan=sdk.lifespan)
    sdk.mount(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/accounts", status_code=201, responses={409: {"description": "The account exists."}})
    async def create_account(body: NewAccount) -> Account:
        async with sdk.engine.begin() as conn:
            stmt = insert(accounts).values(id=body.id, balance=body.balance)
            done = await conn.execute(stmt.on_conflict_do_nothing().returning(accounts.c.id))
            if done.first() is None:
                raise HTTPException(409, detail=f"account {body.id} already exists")
        return Account(id=body.id, balance=body.balance)

    @app.get("/accounts")
    async def list_accounts() -> list[Account]:
        async with sdk.engine.connect() as conn:
            rows = await conn.execute(select(accounts).order_by(accounts.c.id))
            return [Account(id=r.id, balance=r.balance, frozen=r.frozen) for r in rows]

    return app
