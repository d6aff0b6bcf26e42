"""``place_order``: the shop's order as a saga. Reserve the stock, charge the wallet, create the
shipment; undone by release, refund and cancel. The shipment comes last: a blocked destination
is the late failure that shows compensations at work. The charge carries the items, not a price:
the payments service computes the amount from the shop's catalogue."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from participants.sdk.strict import Integer
from sagas.catalogue import StepSpec, Uses, saga


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    sku: str = Field(min_length=1, max_length=32)
    qty: Integer = Field(gt=0, le=100)


class PlaceOrderInput(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    order_id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    customer: str = Field(min_length=1, max_length=64)
    items: list[Item] = Field(min_length=1, max_length=20)
    destination: str = Field(min_length=1, max_length=128)
    # No ``amount``: the payments service prices the items from the shop's catalogue, and an
    # ``amount`` given here is refused (422, extra fields forbidden).


@saga(
    "place_order",
    PlaceOrderInput,
    "Reserve stock, charge the wallet, ship the order.",
    uses=(
        Uses("/stock/reserve", "/stock/reserve/undo", participant="inventory"),
        Uses("/payments/charge", "/payments/charge/undo", participant="payments"),
        Uses("/shipments/create", "/shipments/create/undo", participant="shipping"),
    ),
)
def place_order(inp: PlaceOrderInput) -> list[StepSpec]:
    items = [i.model_dump() for i in inp.items]
    return [
        StepSpec(
            "reserve",
            "inventory",
            "/stock/reserve",
            "/stock/reserve/undo",
            {"order_id": inp.order_id, "items": items},
        ),
        StepSpec(
            "charge",
            "payments",
            "/payments/charge",
            "/payments/charge/undo",
            {"order_id": inp.order_id, "customer": inp.customer, "items": items},
        ),
        StepSpec(
            "ship",
            "shipping",
            "/shipments/create",
            "/shipments/create/undo",
            {"order_id": inp.order_id, "destination": inp.destination},
        ),
    ]
