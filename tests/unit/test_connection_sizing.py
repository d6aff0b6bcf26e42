"""docs/configuration.md's connection figures are what the code opens: the formulas it states,
the per-instance figures at the defaults, the compose stack's totals (from compose.yaml's own
environment and Postgres command) and what `txn dev` gives each server, all computed with
coordinator.sizing and participants.sdk.sizing, which the pools are built from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from coordinator.pglog import PgLog
from coordinator.settings import Settings
from coordinator.sizing import log_pools, max_log_connections
from participants.sdk.settings import ParticipantSettings
from participants.sdk.sizing import max_service_connections
from tests.unit.compose_support import (
    DOCS,
    command_lines,
    coordinator_services,
    documented_rows,
    environment,
    load_compose,
    participant_module,
    services,
    settings_class,
    settings_of,
)
from txn_devstack.postgres import (
    DEFAULT_MAX_CONNECTIONS,
    SPARE_CONNECTIONS,
    SUPERUSER_RESERVED,
    max_connections_for,
)
from txn_devstack.stack import Stack, StackConfig

# The docs' multiplication sign (a letter x would read as a name).
TIMES = "\N{MULTIPLICATION SIGN}"
# A formula as the docs write it: numbers, `this` (the row's setting), times, +, //, max( , ).
FORMULA = re.compile(rf"[0-9this{TIMES}+/max(), ]+")


@pytest.fixture(scope="module")
def text() -> str:
    return re.sub(r"\s+", " ", DOCS.read_text())


def row_meaning(variable: str) -> str:
    (cells,) = documented_rows()[variable]
    return " | ".join(cells[2:])


def documented_formula(variable: str, source: str) -> str:
    """The formula the row of ``variable`` gives for one process's connections."""
    match = re.search(rf"each opens at most (.+?) \(`{re.escape(source)}`", row_meaning(variable))
    assert match is not None, f"the {variable} row states no formula citing {source}"
    assert FORMULA.fullmatch(match.group(1)), match.group(1)
    return match.group(1).replace(TIMES, "*")


def at(formula: str, pool_size: int) -> int:
    value = eval(formula, {"__builtins__": {}, "max": max}, {"this": pool_size})
    assert isinstance(value, int)
    return value


def at_default(variable: str) -> int:
    match = re.search(r"(\d+) at the default", row_meaning(variable))
    assert match is not None, f"the {variable} row gives no figure at the default"
    return int(match.group(1))


def numbers(pattern: str, text: str) -> tuple[int, ...]:
    match = re.search(pattern, text)
    assert match is not None, f"docs/configuration.md lacks {pattern!r}"
    return tuple(int(n) for n in match.groups())


def test_the_formulas_are_the_code_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """The formula each row states is the sizing function's for every pool size (an eighth
    rounding down included), and its figure at the default is the function's there."""
    coordinator = documented_formula("TXN_POOL_SIZE", "coordinator/sizing.py")
    participant = documented_formula("TXNP_POOL_SIZE", "participants/sdk/sizing.py")
    for n in range(1, 257):
        assert at(coordinator, n) == log_pools(n).most, n
        assert at(participant, n) == max_service_connections(ParticipantSettings(pool_size=n)), n
    coord_defaults = settings_of(Settings, {}, monkeypatch)
    participant_defaults = settings_of(ParticipantSettings, {}, monkeypatch)
    assert at_default("TXN_POOL_SIZE") == max_log_connections(coord_defaults)
    assert at_default("TXNP_POOL_SIZE") == max_service_connections(participant_defaults)


def test_pglog_builds_its_pools_from_the_sizing() -> None:
    """What PgLog.connect makes (nothing is opened yet) is what log_pools counts."""
    store = PgLog.connect("postgresql://nobody@127.0.0.1:1/none", pool_size=40)
    pools = log_pools(40)
    assert store.pool_size == pools.asyncpg_size == 40
    engine_pool: Any = store.engine.sync_engine.pool
    assert (engine_pool.size(), engine_pool._max_overflow) == (5, 5)
    assert (pools.engine_size, pools.engine_overflow) == (5, 5)


def test_compose_figures(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compose paragraph's counts are the functions' over compose.yaml's services, with
    the settings each service reads from its environment, and fit the server's command."""
    svcs = services(load_compose())
    coordinators = [
        max_log_connections(settings_of(Settings, environment(svcs[name]), monkeypatch))
        for name in coordinator_services(svcs)
    ]
    participants: list[int] = []
    at_default_pool: list[int] = []
    for svc in svcs.values():
        module = participant_module(svc)
        if module is None:
            continue
        cls = settings_class(module)
        participants.append(
            max_service_connections(settings_of(cls, environment(svc), monkeypatch))
        )
        unset = {k: v for k, v in environment(svc).items() if k.upper() != "TXNP_POOL_SIZE"}
        at_default_pool.append(max_service_connections(settings_of(cls, unset, monkeypatch)))
    # The docs say "each": one figure per kind of service.
    assert len(set(coordinators)) == len(set(participants)) == len(set(at_default_pool)) == 1
    total = sum(coordinators) + sum(participants)

    (argv,) = command_lines(svcs["postgres"]["command"])
    server = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv[:-1]) if a == "-c")
    most = int(server["max_connections"])
    reserved = int(server.get("superuser_reserved_connections", SUPERUSER_RESERVED))
    assert total <= most - reserved, f"compose's services may open {total}; {most - reserved} left"

    said = numbers(r"`max_connections=(\d+)`, of which (\d+) are reserved", text)
    assert said == (most, reserved)
    said = numbers(r"opens at most (\d+) connections \(`TXN_POOL_SIZE` (\d+)", text)
    assert said == (coordinators[0], Settings.model_fields["pool_size"].default)
    said = numbers(r"participant services (\d+) \(`TXNP_POOL_SIZE` (\d+) in `compose.yaml`", text)
    assert said == (participants[0], int(environment(svcs["ledger1"])["TXNP_POOL_SIZE"]))
    sum_of_two = rf"(\d+) {TIMES} (\d+) \+ (\d+) {TIMES} (\d+) = (\d+)"
    said = numbers(rf"{sum_of_two} at most, within the (\d+)", text)
    assert said == (
        len(coordinators),
        coordinators[0],
        len(participants),
        participants[0],
        total,
        most - reserved,
    )
    said = numbers(rf"would open up to {sum_of_two}\.", text)
    assert said == (
        len(coordinators),
        coordinators[0],
        len(at_default_pool),
        at_default_pool[0],
        sum(coordinators) + sum(at_default_pool),
    )


def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **config: Any) -> Stack:
    """A stack not started: its sizing only, in an environment without pool sizes of ours."""
    for key in ("TXN_POOL_SIZE", "TXNP_POOL_SIZE"):
        monkeypatch.delenv(key, raising=False)
    return Stack(StackConfig(state_dir=tmp_path, **config))


def test_txn_dev_sizes_each_server_as_documented(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dev stack paragraph's reserve, spare and floor are devstack's, and `txn dev`'s
    default stack (one coordinator, the ledgers and the shop, a server each) gets the figure
    it says on every server."""
    said = numbers(
        r"plus the (\d+) reserved for the superuser and (\d+) spare .*?"
        r"never below Postgres' default of (\d+)\. The default stack .*? gets (\d+) on each",
        text,
    )
    assert said[:3] == (SUPERUSER_RESERVED, SPARE_CONNECTIONS, DEFAULT_MAX_CONNECTIONS)
    dev = stack(tmp_path, monkeypatch, shop=True)  # as `txn dev` configures it
    needs = dev.connection_needs()
    assert len(needs) == 1 + 3 + 4
    assert {dev.max_connections(n) for n in needs.values()} == {said[3]}


def test_txn_dev_counts_every_service_with_the_pool_size_it_gets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log's server holds every coordinator's pools; on one shared server, every
    participant's too; the pool sizes are read as the services read them (any case); above the
    floor, max_connections is the services' most, the reserve and the spare."""
    coordinator_env, participant_env = {"txn_pool_size": "64"}, {"TXNP_POOL_SIZE": "50"}
    coordinator = max_log_connections(settings_of(Settings, coordinator_env, monkeypatch))
    participant = max_service_connections(
        settings_of(ParticipantSettings, participant_env, monkeypatch)
    )
    assert (coordinator, participant) == (144, 100)
    own = stack(
        tmp_path,
        monkeypatch,
        coordinators=3,
        ledgers=2,
        coordinator_env=coordinator_env,
        participant_env=participant_env,
    )
    assert own.connection_needs() == {"log": 3 * 144, "ledger1": 100, "ledger2": 100}
    shared = stack(
        tmp_path,
        monkeypatch,
        coordinators=3,
        ledgers=2,
        cluster_per_participant=False,
        coordinator_env=coordinator_env,
        participant_env=participant_env,
        spare_connections=50,
    )
    assert shared.connection_needs() == {"log": 3 * 144 + 2 * 100}
    assert shared.max_connections(3 * 144 + 2 * 100) == 632 + SUPERUSER_RESERVED + 50
    # From the environment the services inherit, unless the stack's own env says otherwise.
    monkeypatch.setenv("TXNP_POOL_SIZE", "5")
    inherited = Stack(StackConfig(state_dir=tmp_path, ledgers=1))
    assert inherited.connection_needs()["ledger1"] == 10
    assert max_connections_for(0) == max_connections_for(10) == DEFAULT_MAX_CONNECTIONS
