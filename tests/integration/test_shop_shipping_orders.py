"""The shop's shipping and orders services against a real Postgres: shipments created once,
refused for blocked destinations, cancelled idempotently; an order's 2PC confirm branch; the
orders API's validation; and the one function settling an order from a coordinator's answer
(the coordinator faked by an injected async callable)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from participants.orders import app as orders_service
from participants.orders.app import (
    NEVER_REACHED,
    ClientCoordinator,
    OrdersSettings,
    Reply,
    apply_outcome,
    confirm_order,
)
from participants.sdk import Participant, ParticipantSettings
from participants.sdk.db import make_engine
from participants.shipping import app as shipping_service
from participants.shipping.app import (
    ShippingSettings,
    cancel_shipment,
    create_shipment_handler,
)
from tests.conftest import create_db
from tests.helpers import SECURE, Counting, api_client, branch_call
from txn_devstack.postgres import Cluster

# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
async def shipping_dsn(pg: Cluster) -> str:
    return await create_db(pg, "shipping")


@pytest.fixture
async def orders_dsn(pg: Cluster) -> str:
    return await create_db(pg, "orders")


@pytest.fixture
async def shipping(shipping_dsn: str) -> AsyncIterator[Participant]:
    engine = make_engine(shipping_dsn, pool_size=3)
    try:
        yield Participant(ParticipantSettings(name="t", dsn=shipping_dsn), engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def orders_engine(orders_dsn: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(orders_dsn, pool_size=3)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def orders_sdk(orders_dsn: str, orders_engine: AsyncEngine) -> Participant:
    return Participant(ParticipantSettings(name="t", dsn=orders_dsn), orders_engine)


async def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def gid() -> str:
    return f"shop-{uuid.uuid4().hex}"


async def shipments(dsn: str) -> list[tuple[str, str, str]]:
    rows = await sql(dsn, "SELECT order_id, destination, status FROM shipments ORDER BY order_id")
    return [(r["order_id"], r["destination"], r["status"]) for r in rows]


async def new_order(dsn: str, status: str = "pending", age_s: float = 0) -> str:
    order_id = uuid.uuid4().hex
    await sql(
        dsn,
        "INSERT INTO orders (id, customer, items, destination, mode, total, status, gid, "
        "created_at) VALUES ($1, 'alice', '[{\"sku\": \"SKU-1\", \"qty\": 2}]', 'Berlin', "
        "'saga', 4800, $2, $3, now() - make_interval(secs => $4))",
        order_id,
        status,
        f"order-{order_id}",
        float(age_s),
    )
    return order_id


async def order_row(dsn: str, order_id: str) -> tuple[str, str | None]:
    rows = await sql(dsn, "SELECT status, reason FROM orders WHERE id = $1", order_id)
    return rows[0]["status"], rows[0]["reason"]


class FakeCoordinator:
    """Answers every call with ``reply`` and records the calls as the HTTP requests they stand
    for (method, path, body)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.calls: list[tuple[str, str, dict[str, Any] | None]] = []

    async def submit(self, body: dict[str, Any], wait: float) -> Reply:
        self.calls.append(("POST", f"/v1/transactions?wait={wait:g}", body))
        return self.reply

    async def get(self, gid: str) -> Reply:
        self.calls.append(("GET", f"/v1/transactions/{gid}?events=false", None))
        return self.reply


# -- shipping ----------------------------------------------------------------------------------

CREATE = create_shipment_handler(["Atlantis", "Mordor"])


async def test_shipment_created(shipping: Participant, shipping_dsn: str) -> None:
    status, answer = await shipping.run_action(
        gid(), 2, {"order_id": "o1", "destination": "Berlin"}, CREATE
    )
    assert status == 200, answer
    assert answer["result"] == {"order_id": "o1", "destination": "Berlin", "status": "created"}
    assert await shipments(shipping_dsn) == [("o1", "Berlin", "created")]


@pytest.mark.parametrize(
    ("destination", "reason"),
    [
        ("Atlantis", "we do not ship to Atlantis"),
        ("atlantis", "we do not ship to Atlantis"),
        (" MORDOR ", "we do not ship to Mordor"),
    ],
)
async def test_blocked_destination_refused(
    shipping: Participant, shipping_dsn: str, destination: str, reason: str
) -> None:
    payload = {"order_id": "o2", "destination": destination}
    assert await shipping.run_action(gid(), 2, payload, CREATE) == (409, {"reason": reason})
    assert await shipping.prepare(gid(), 0, payload, CREATE) == (409, {"reason": reason})
    assert await shipments(shipping_dsn) == []


async def test_blocked_destinations_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ShippingSettings().blocked_destinations == ["Atlantis", "Mordor"]
    monkeypatch.setenv("TXNP_BLOCKED_DESTINATIONS", "Narnia, Oz ,")
    assert ShippingSettings().blocked_destinations == ["Narnia", "Oz"]


async def test_duplicate_action_creates_once(shipping: Participant, shipping_dsn: str) -> None:
    g, create = gid(), Counting(CREATE)
    payload = {"order_id": "o3", "destination": "Lisbon"}
    assert (await shipping.run_action(g, 2, payload, create))[0] == 200
    assert await shipping.run_action(g, 2, payload, create) == (
        200,
        {"done": True, "repeat": True},
    )
    assert create.calls == 1
    # Another transaction for the same order is refused, in words.
    again = await shipping.run_action(gid(), 2, payload, create)
    assert again == (409, {"reason": "order o3 already has a shipment (created)"})
    assert await shipments(shipping_dsn) == [("o3", "Lisbon", "created")]


async def test_cancel_is_idempotent(shipping: Participant, shipping_dsn: str) -> None:
    g, undo = gid(), Counting(cancel_shipment)
    payload = {"order_id": "o4", "destination": "Oslo"}
    assert (await shipping.run_action(g, 2, payload, CREATE))[0] == 200
    first = await shipping.run_compensation(g, 2, payload, undo)
    assert first == (
        200,
        {"compensated": True, "result": {"order_id": "o4", "status": "cancelled"}},
    )
    again = await shipping.run_compensation(g, 2, payload, undo)
    assert again == (200, {"compensated": True, "repeat": True})
    assert undo.calls == 1
    assert await shipments(shipping_dsn) == [("o4", "Oslo", "cancelled")]
    # Cancelling an order without a shipment changes nothing.
    async with shipping.engine.begin() as conn:
        assert await cancel_shipment(conn, {"order_id": "nope"}) == {
            "order_id": "nope",
            "status": "none",
        }
    assert await shipments(shipping_dsn) == [("o4", "Oslo", "cancelled")]


async def test_shipping_http(shipping_dsn: str) -> None:
    settings = ShippingSettings(dsn=shipping_dsn, coordinators=[], **SECURE)
    app = shipping_service.create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with api_client(transport=transport, base_url="http://shipping") as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            body = {"order_id": "o5", "destination": "atlantis"}

            async def create() -> httpx.Response:
                path = "/shipments/create"
                return await branch_call(client, "shipping", path, "action", gid(), 2, body)

            refused = await create()
            assert refused.status_code == 409
            assert refused.json() == {
                "type": "about:blank",
                "title": "Conflict",
                "status": 409,
                "detail": "we do not ship to Atlantis",
            }
            body["destination"] = "Paris"
            assert (await create()).is_success
            listed = await client.get("/shipments")
            assert listed.json() == [
                {"order_id": "o5", "destination": "Paris", "status": "created"}
            ]


# -- orders: the 2PC confirm branch ----------------------------------------------------------


async def test_confirm_prepare_and_commit_confirms_once(
    orders_sdk: Participant, orders_dsn: str
) -> None:
    order_id, g, confirm = await new_order(orders_dsn), gid(), Counting(confirm_order)
    first = await orders_sdk.prepare(g, 2, {"order_id": order_id}, confirm)
    assert first[0] == 200 and first[1]["vote"] == "yes", first
    assert await order_row(orders_dsn, order_id) == ("pending", None)  # not before commit
    again = await orders_sdk.prepare(g, 2, {"order_id": order_id}, confirm)
    assert again == (200, {"vote": "yes", "prepared": f"txn:{g}:2", "repeat": True})
    assert (await orders_sdk.commit(g, 2))[0] == 200
    assert await order_row(orders_dsn, order_id) == ("confirmed", None)
    assert (await orders_sdk.commit(g, 2))[0] == 200
    assert confirm.calls == 1


async def test_confirm_refuses_a_non_pending_order(
    orders_sdk: Participant, orders_dsn: str
) -> None:
    cancelled = await new_order(orders_dsn, status="cancelled")
    refused = await orders_sdk.prepare(gid(), 2, {"order_id": cancelled}, confirm_order)
    assert refused == (409, {"reason": f"order {cancelled} is not pending"})
    unknown = await orders_sdk.prepare(gid(), 2, {"order_id": "missing"}, confirm_order)
    assert unknown == (409, {"reason": "order missing does not exist"})
    assert await order_row(orders_dsn, cancelled) == ("cancelled", None)


# -- orders: the outcome ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(200, {"status": "committed", "reason": None}), ("confirmed", None)),
        (
            Reply(201, {"status": "aborted", "reason": "shipping: we do not ship to Atlantis"}),
            ("cancelled", "shipping: we do not ship to Atlantis"),
        ),
        (
            Reply(200, {"status": "aborted", "reason": None}),
            ("cancelled", "the transaction was aborted"),
        ),
        (Reply(201, {"status": "compensating", "reason": "x"}), ("pending", None)),
        (Reply(200, {"status": "committing", "reason": None}), ("pending", None)),
        (Reply(None, error="connection refused"), ("pending", None)),
        (Reply(503, {"detail": "log unreachable"}), ("pending", None)),
        (
            Reply(422, {"detail": "unknown participant"}),
            ("cancelled", "refused by the coordinator: unknown participant"),
        ),
        (Reply(404, {"detail": "no transaction"}), ("pending", None)),  # no age rule given
    ],
)
async def test_apply_outcome_maps_replies(
    orders_engine: AsyncEngine, orders_dsn: str, reply: Reply, expected: tuple[str, str | None]
) -> None:
    order_id = await new_order(orders_dsn)
    order = await apply_outcome(orders_engine, order_id, reply)
    assert order is not None and (order.status, order.reason) == expected
    assert await order_row(orders_dsn, order_id) == expected


async def test_apply_outcome_404_cancels_only_old_orders(
    orders_engine: AsyncEngine, orders_dsn: str
) -> None:
    missing = Reply(404, {"detail": "no transaction"})
    young, old = await new_order(orders_dsn, age_s=5), await new_order(orders_dsn, age_s=120)
    assert (await apply_outcome(orders_engine, young, missing, unknown_after_s=60)) is not None
    assert await order_row(orders_dsn, young) == ("pending", None)
    await apply_outcome(orders_engine, old, missing, unknown_after_s=60)
    assert await order_row(orders_dsn, old) == ("cancelled", NEVER_REACHED)


async def test_apply_outcome_leaves_settled_orders_alone(
    orders_engine: AsyncEngine, orders_dsn: str
) -> None:
    confirmed = await new_order(orders_dsn, status="confirmed")
    await apply_outcome(orders_engine, confirmed, Reply(200, {"status": "aborted", "reason": "r"}))
    assert await order_row(orders_dsn, confirmed) == ("confirmed", None)
    assert (
        await apply_outcome(orders_engine, "unknown", Reply(200, {"status": "committed"})) is None
    )


# -- orders: the HTTP API with an injected coordinator ---------------------------------------


def orders_client(dsn: str, coordinator: FakeCoordinator) -> Any:
    settings = OrdersSettings(dsn=dsn, coordinators=[], **SECURE)
    return orders_service.create_app(settings, coordinator=coordinator)


GOOD = {
    "customer": "alice",
    "items": [{"sku": "SKU-1", "qty": 2}, {"sku": "SKU-3", "qty": 1}],
    "destination": "Berlin",
    "mode": "saga",
}


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"items": [{"sku": "SKU-999", "qty": 1}]}, ["body", "items", 0, "sku"]),
        ({"items": [{"sku": "SKU-1", "qty": 0}]}, ["body", "items", 0, "qty"]),
        ({"items": [{"sku": "SKU-1", "qty": 101}]}, ["body", "items", 0, "qty"]),
        ({"items": []}, ["body", "items"]),
        ({"items": [{"sku": "SKU-1", "qty": 1}] * 21}, ["body", "items"]),
        ({"mode": "3pc"}, ["body", "mode"]),
        ({"customer": ""}, ["body", "customer"]),
    ],
)
async def test_post_order_validation(
    orders_dsn: str, change: dict[str, Any], loc: list[Any]
) -> None:
    fake = FakeCoordinator(Reply(200, {"status": "committed"}))
    app = orders_client(orders_dsn, fake)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with api_client(transport=transport, base_url="http://orders") as client:
            reply = await client.post("/orders", json={**GOOD, **change})
    assert reply.status_code == 422, reply.text
    assert [e["field"] for e in reply.json()["errors"]] == [".".join(map(str, loc))]
    assert fake.calls == []
    assert await sql(orders_dsn, "SELECT id FROM orders") == []


async def test_post_order_submits_and_applies_the_outcome(orders_dsn: str) -> None:
    fake = FakeCoordinator(Reply(201, {"status": "committed", "reason": None}))
    app = orders_client(orders_dsn, fake)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with api_client(transport=transport, base_url="http://orders") as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            saga = (await client.post("/orders", json=GOOD)).json()
            assert saga["status"] == "confirmed" and saga["total"] == 2 * 2400 + 1500
            assert saga["gid"] == f"order-{saga['id']}"
            method, path, body = fake.calls[-1]
            assert (method, path) == ("POST", "/v1/transactions?wait=30")
            assert body == {
                "gid": saga["gid"],
                "saga": "place_order",
                "input": {
                    "order_id": saga["id"],
                    "customer": "alice",
                    "items": GOOD["items"],
                    "destination": "Berlin",
                },
            }

            fake.reply = Reply(None, error="connection refused")
            posted = await client.post("/orders", json={**GOOD, "mode": "2pc"})
            assert posted.status_code == 201
            pending = posted.json()
            assert (pending["status"], pending["reason"]) == ("pending", None)
            body = fake.calls[-1][2]
            assert body is not None and body["mode"] == "2pc"
            assert [(b["participant"], b["action"]) for b in body["branches"]] == [
                ("inventory", "/stock/reserve"),
                ("payments", "/payments/charge"),
                ("orders", "/orders/confirm"),
            ]
            assert body["branches"][1]["payload"] == {  # no amount: payments prices the items
                "order_id": pending["id"],
                "customer": "alice",
                "items": GOOD["items"],
            }

            # A later GET asks the coordinator about the pending order's gid.
            fake.reply = Reply(200, {"status": "aborted", "reason": "payments: no money"})
            got = (await client.get(f"/orders/{pending['id']}")).json()
            assert (got["status"], got["reason"]) == ("cancelled", "payments: no money")
            assert fake.calls[-1][:2] == ("GET", f"/v1/transactions/{pending['gid']}?events=false")
            calls = len(fake.calls)
            assert (await client.get(f"/orders/{pending['id']}")).json() == got
            assert len(fake.calls) == calls  # settled: the coordinator is not asked again

            assert (await client.get("/orders/nope")).status_code == 404
            listed = await client.get("/orders", params={"status": "cancelled"})
            assert [o["id"] for o in listed.json()] == [pending["id"]]
            assert len((await client.get("/orders")).json()) == 2
            assert (await client.get("/orders", params={"status": "lost"})).status_code == 422


# -- orders: the real HTTP client --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


TRANSACTION = {
    "gid": "g",
    "mode": "saga",
    "status": "committed",
    "reason": None,
    "created_at": "2026-12-01T00:00:00Z",
    "updated_at": "2026-12-01T00:00:01Z",
    "branches": [],
}


async def test_client_coordinator_tries_the_next_on_connection_errors() -> None:
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.json_response(TRANSACTION, status=201)

    app = web.Application()
    app.router.add_post("/v1/transactions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    dead = f"http://127.0.0.1:{free_port()}"
    client = ClientCoordinator([dead, f"http://127.0.0.1:{port}/"], timeout_s=5)
    try:
        reply = await client.submit({"gid": "g"}, 1)
        assert reply == Reply(201, TRANSACTION)
        assert seen == ["/v1/transactions?wait=1"]
        alone = ClientCoordinator([dead], timeout_s=5)
        try:
            nobody = await alone.get("g")
            assert nobody.status is None and nobody.error
        finally:
            await alone.close()
        assert await ClientCoordinator([], timeout_s=5).get("g") == Reply(
            None, error="no coordinator configured"
        )
    finally:
        await client.close()
        await runner.cleanup()
