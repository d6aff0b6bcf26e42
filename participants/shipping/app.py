"""The shipping service: one shipment per order. ``POST /shipments/create`` creates it, as a saga
action or a 2PC prepare (by ``Txn-Op``), refusing the destinations it does not serve;
``POST /shipments/create/undo`` is the saga compensation that cancels it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import NoDecode
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from participants.sdk import BusinessError, Handler, Participant, ParticipantSettings
from participants.shipping.schema import shipments

ORDER_ID = r"^[A-Za-z0-9._:-]{1,64}$"


class ShippingSettings(ParticipantSettings):
    """The SDK's settings (``TXNP_*``) plus the destinations this service refuses."""

    name: str = "shipping"
    blocked_destinations: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["Atlantis", "Mordor"],
        description="Destinations refused, case-insensitively (comma-separated).",
    )

    @field_validator("blocked_destinations", mode="before")
    @classmethod
    def _split_destinations(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class CreateShipment(BaseModel):
    order_id: str = Field(pattern=ORDER_ID)
    destination: str = Field(min_length=1, max_length=128)


class CancelShipment(BaseModel):
    order_id: str = Field(pattern=ORDER_ID)


class Shipment(BaseModel):
    order_id: str
    destination: str
    status: Literal["created", "cancelled"]


def _invalid(e: ValidationError) -> BusinessError:
    err = e.errors()[0]
    field = ".".join(str(part) for part in err["loc"]) or "payload"
    return BusinessError(f"invalid shipment payload: {field}: {err['msg']}")


def create_shipment_handler(blocked: list[str]) -> Handler:
    """The create handler refusing ``blocked`` destinations (compared case-insensitively)."""
    refused = {d.strip().casefold(): d.strip() for d in blocked if d.strip()}

    async def create_shipment(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
        """create the order's shipment (refused for a blocked destination)"""
        try:
            req = CreateShipment.model_validate(payload)
        except ValidationError as e:
            raise _invalid(e) from e
        name = refused.get(req.destination.strip().casefold())
        if name is not None:
            raise BusinessError(f"we do not ship to {name}")
        stmt = insert(shipments).values(
            order_id=req.order_id, destination=req.destination, status="created"
        )
        done = await conn.execute(stmt.on_conflict_do_nothing().returning(shipments.c.order_id))
        if done.first() is None:
            status = (
                await conn.execute(
                    select(shipments.c.status).where(shipments.c.order_id == req.order_id)
                )
            ).scalar_one()
            raise BusinessError(f"order {req.order_id} already has a shipment ({status})")
        return {"order_id": req.order_id, "destination": req.destination, "status": "created"}

    return create_shipment


async def cancel_shipment(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """cancel the order's shipment (none: nothing to do)"""
    try:
        req = CancelShipment.model_validate(payload)
    except ValidationError as e:
        raise _invalid(e) from e
    stmt = (
        update(shipments)
        .where(shipments.c.order_id == req.order_id)
        .values(status="cancelled")
        .returning(shipments.c.order_id)
    )
    found = (await conn.execute(stmt)).first() is not None
    return {"order_id": req.order_id, "status": "cancelled" if found else "none"}


def create_app(settings: ShippingSettings | None = None) -> FastAPI:
    settings = settings or ShippingSettings()
    sdk = Participant(settings)
    create = create_shipment_handler(settings.blocked_destinations)
    sdk.twopc("/shipments/create")(create)
    sdk.action("/shipments/create", compensation="/shipments/create/undo")(create)
    sdk.compensation("/shipments/create/undo")(cancel_shipment)
    app = FastAPI(title=f"shipping ({settings.name})", lifespan=sdk.lifespan)
    sdk.mount(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/shipments")
    async def list_shipments() -> list[Shipment]:
        async with sdk.engine.connect() as conn:
            rows = await conn.execute(select(shipments).order_by(shipments.c.order_id))
            return [Shipment.model_validate(r._asdict()) for r in rows]

    return app
