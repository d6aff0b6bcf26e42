"""The ledger service: accounts with non-negative balances. ``POST /accounts/adjust`` adds a
delta, as a 2PC prepare or a saga action (by ``Txn-Op``); ``POST /accounts/adjust/undo`` is the
saga compensation that takes the same delta back."""

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


class Adjust(BaseModel):
    account: str = Field(pattern=ACCOUNT_ID)
    delta: int = Field(ge=-(2**62), le=2**62)


_ADJUST = text(
    "UPDATE accounts SET balance = balance + :delta "
    "WHERE id = :account AND balance + :delta >= 0 RETURNING balance"
)


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
    current = (
        await conn.execute(select(accounts.c.balance).where(accounts.c.id == account))
    ).scalar_one_or_none()
    if current is None:
        raise BusinessError(f"account {account} does not exist")
    raise BusinessError(f"account {account} has {current}; {doing} would make it negative")


async def adjust(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """add delta to an account's balance"""
    req = _payload(payload)
    return await _apply(conn, req.account, req.delta, f"adding {req.delta}")


async def undo_adjust(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """take an adjust's delta back (refused while that would make the balance negative)"""
    req = _payload(payload)
    return await _apply(conn, req.account, -req.delta, f"undoing {req.delta:+d}")


def adjust_statement(payload: dict[str, Any]) -> Statement | None:
    """``adjust`` as one statement, for the one-round-trip path; None for a payload the
    handler must judge (it then explains the refusal)."""
    try:
        req = Adjust.model_validate(payload)
    except ValidationError:
        return None
    return Statement(
        "UPDATE accounts SET balance = balance + {delta} "
        "WHERE id = {account} AND balance + {delta} >= 0 RETURNING 1",
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
            return [Account(id=r.id, balance=r.balance) for r in rows]

    return app
