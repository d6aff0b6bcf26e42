"""Static checks of compose.yaml (Docker cannot run here): every command it runs exists in this
package, every variable it uses is documented, ports do not clash, the settings it gives the
services (environment and secrets files) are ones those services accept, the coordinators'
registry matches the participant services and their ports, every database a service uses is
migrated with the target that service needs, and the stack's connections fit in Postgres'
max_connections. Also: every setting is documented in docs/configuration.md with its real
default. The secrets and least-privilege checks are in test_compose_secrets.py."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from coordinator.access import startup_problems
from coordinator.settings import Settings
from participants.sdk.tokens import token_hash
from tests.unit.compose_support import (
    COMPOSE,
    COORDINATOR_ALIAS,
    COORDINATORS,
    DOCKERFILE,
    LEDGERS,
    ROOT,
    SECRET_WORDS,
    SETTINGS,
    VAR_REF,
    check_project_command,
    command_lines,
    coordinator_services,
    databases_created,
    dependency_cycle,
    documented_rows,
    environment,
    generate_secrets,
    host_ports,
    load_compose,
    migrated_databases,
    migration_problems,
    migration_target,
    mounts,
    network_aliases,
    own_fields,
    participant_module,
    registry_problems,
    service_settings,
    services,
    settings_class,
    split_assignments,
    with_secret,
)
from txn_devstack.stack import SHOP

# -- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def docs() -> dict[str, list[list[str]]]:
    return documented_rows()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """./secrets/ as deploy/make_secrets.py writes it."""
    folder = tmp_path_factory.mktemp("compose") / "secrets"
    generate_secrets(folder)
    return folder


def test_compose_is_valid_yaml_with_the_expected_services(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    assert {"postgres", "migrate", *COORDINATORS, *LEDGERS} <= set(svcs)
    assert coordinator_services(svcs) == list(COORDINATORS)
    for name, svc in svcs.items():
        assert isinstance(svc, dict), name
        assert "image" in svc or "build" in svc, f"service {name} has neither image nor build"


def test_the_shop_services_exist(compose: dict[str, Any]) -> None:
    """The demo shop's services (the same four the embedded stack runs), each built from this
    project and running its own module."""
    svcs = services(compose)
    assert set(SHOP) == {"orders", "inventory", "payments", "shipping"}
    missing = set(SHOP) - set(svcs)
    assert not missing, f"compose.yaml lacks the shop services {sorted(missing)}"
    for name in SHOP:
        assert "build" in svcs[name], f"{name} is not built from this project"
        assert participant_module(svcs[name]) == f"participants.{name}", name


def test_commands_exist_in_this_package(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = 0
    for name, svc in services(compose).items():
        if "build" not in svc:
            continue  # a third-party image: its command is its own business (checked below)
        assert "command" in svc, f"service {name} relies on the image's default command"
        for line in command_lines(svc["command"]):
            check_project_command(name, line, monkeypatch)
            checked += 1
    assert checked >= 17  # migrate (8 lines), 2 coordinators, 3 ledgers, 4 shop services


def test_dockerfile_builds_from_files_that_exist(compose: dict[str, Any]) -> None:
    built = [s for s in services(compose).values() if "build" in s]
    assert built
    for svc in built:
        build = svc["build"]
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert (context / dockerfile).is_file()
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"pip install [^\n]*\.", text)
    for line in re.findall(r"^COPY\s+(.+)$", text, re.M):
        *sources, _dest = line.split()
        plain = [src for src in sources if not any(c in src for c in "*?[")]
        for source in plain:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
        # Docker only requires a glob to match when nothing else on the line does.
        assert plain or any(any(ROOT.glob(src)) for src in sources), line
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for package in (p.rstrip("*") for p in found["find"]["include"]):
        assert re.search(rf"^COPY\s+{package}\b", text, re.M), f"the image lacks {package}"


def test_postgres_allows_prepared_transactions(compose: dict[str, Any]) -> None:
    pg = services(compose)["postgres"]
    assert str(pg["image"]).startswith("postgres:15")
    argv = command_lines(pg["command"])[0]
    assert argv[0] == "postgres"
    settings = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv[:-1]) if a == "-c")
    assert int(settings.get("max_prepared_transactions", "0")) >= 200
    assert "pg_isready" in " ".join(map(str, pg["healthcheck"]["test"]))
    mounts = [str(v) for v in pg.get("volumes", [])]
    assert any(v.startswith("./deploy/initdb.sql:/docker-entrypoint-initdb.d/") for v in mounts), (
        mounts
    )
    assert databases_created() >= {"txn_log", *LEDGERS, *SHOP}


def test_migrations_cover_every_database_a_service_uses(
    compose: dict[str, Any], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each service's database (its DSN from its secrets) is migrated with the target its module
    needs (``python -m participants.X`` -> ``X``), and exists on the server."""
    svcs = services(compose)
    migrated = migrated_databases(svcs, monkeypatch)
    problems = migration_problems(compose, migrated, folder)
    assert not problems, "\n".join(problems)
    assert migrated == {
        "txn_log": "coordinator",
        **dict.fromkeys(LEDGERS, "ledger"),
        **{name: name for name in SHOP},
    }
    missing = set(migrated) - databases_created()
    assert not missing, f"deploy/initdb.sql does not create {sorted(missing)}"


def test_registry_names_the_participant_services_at_their_ports(compose: dict[str, Any]) -> None:
    problems = registry_problems(services(compose))
    assert not problems, "\n".join(problems)


def test_every_variable_used_is_documented(
    compose: dict[str, Any], docs: dict[str, list[list[str]]]
) -> None:
    """Variables compose substitutes, the environment it gives each service, and the settings
    it gives as secrets files (``/run/secrets/txnp_secret`` is ``TXNP_SECRET``)."""
    referenced = {m.group(1) for m in VAR_REF.finditer(COMPOSE.read_text())}
    missing = referenced - set(docs)
    assert not missing, f"compose.yaml references undocumented variables: {sorted(missing)}"
    for name, svc in services(compose).items():
        undocumented = set(environment(svc)) - set(docs)
        assert not undocumented, f"service {name} sets undocumented {sorted(undocumented)}"
        if name in ("postgres", "migrate"):
            continue  # files read by deploy/initdb.sql, the image and the shell, not settings
        as_files = {target.upper() for target in mounts(svc)}
        undocumented = as_files - set(docs)
        assert not undocumented, f"service {name} is given undocumented {sorted(undocumented)}"


def test_secrets_are_required_not_defaulted(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for m in VAR_REF.finditer(text):
        name, modifier = m.groups()
        if any(word in name for word in SECRET_WORDS):
            assert modifier.startswith(":?") and len(modifier) > 2, (
                f"${{{name}{modifier}}}: a secret must be required with ${{{name}:?message}}"
            )
    # (No secret is given in an environment at all: test_compose_secrets.py.)


def test_host_ports_are_unique(compose: dict[str, Any]) -> None:
    seen: dict[int, str] = {}
    for name, svc in services(compose).items():
        for spec in svc.get("ports", []):
            for port in host_ports(spec):
                assert port not in seen, f"host port {port}: {seen[port]} and {name}"
                seen[port] = name
    assert seen


def test_coordinators_have_an_instance_id_and_a_host_port_each(compose: dict[str, Any]) -> None:
    """Two coordinator services rather than one with replicas: each sets its TXN_INSTANCE_ID
    (the host name, the default, changes whenever compose recreates the container; the leases
    in the log are keyed by it) and a host port of its own; both answer to the alias the
    participants' TXNP_COORDINATORS names. They differ in nothing else."""
    svcs = services(compose)
    ids, ports = {}, {}
    for name in COORDINATORS:
        svc = svcs[name]
        assert "TXN_INSTANCE_ID" in environment(svc), f"{name} would be known by its host name"
        ids[name] = environment(svc)["TXN_INSTANCE_ID"]
        assert ids[name], name
        ports[name] = [p for spec in svc.get("ports", []) for p in host_ports(spec)]
        assert len(ports[name]) == 1, f"{name}: host ports {ports[name]}"
        # One container per id: replicas of a service would share its TXN_INSTANCE_ID.
        assert (svc.get("deploy") or {}).get("replicas", 1) == 1, name
        assert COORDINATOR_ALIAS in network_aliases(svc), f"{name} is not {COORDINATOR_ALIAS}"
    assert len(set(ids.values())) == len(COORDINATORS), f"shared instance ids: {ids}"
    assert ids == {name: name for name in COORDINATORS}
    assert len({p for found in ports.values() for p in found}) == len(COORDINATORS), ports
    assert ports == {"coordinator1": [8000], "coordinator2": [8001]}
    assert COORDINATOR_ALIAS not in svcs, "a service would take the coordinators' alias"

    def common(svc: dict[str, Any]) -> dict[str, Any]:
        rest = {k: v for k, v in svc.items() if k != "ports"}
        rest["environment"] = {k: v for k, v in environment(svc).items() if k != "TXN_INSTANCE_ID"}
        return rest

    first, *others = (common(svcs[name]) for name in COORDINATORS)
    assert all(other == first for other in others), "the coordinators differ"


def test_depends_on_targets_exist(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in svcs.items():
        deps = svc.get("depends_on") or {}
        items = {d: {} for d in deps} if isinstance(deps, list) else deps
        for target, spec in items.items():
            assert target in svcs, f"service {name} depends on unknown service {target}"
            condition = (spec or {}).get("condition", "service_started")
            assert condition in conditions, (name, target, condition)
            if condition == "service_healthy":
                assert "healthcheck" in svcs[target], f"{target} has no healthcheck"
    for name in (*COORDINATORS, *LEDGERS, *SHOP):
        deps = svcs[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
    assert svcs["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # orders submits every order to the coordinators: it waits for each.
    for name in COORDINATORS:
        condition = (svcs["orders"]["depends_on"].get(name) or {}).get("condition")
        assert condition == "service_healthy", f"orders does not wait for {name}"
    assert dependency_cycle(svcs) is None, f"depends_on cycle: {dependency_cycle(svcs)}"


def test_long_running_services_restart(compose: dict[str, Any]) -> None:
    for name, svc in services(compose).items():
        policy = str(svc.get("restart", "no"))
        if name == "migrate":
            assert policy == "no", "the one-shot migrate job must not be restarted"
        else:
            assert policy in ("always", "unless-stopped") or policy.startswith("on-failure"), (
                f"service {name} has restart policy {policy!r}"
            )


def unread(cls: type[Any], prefix: str, svc: dict[str, Any]) -> set[str]:
    """Variables (in the environment or as /run/secrets files) given to a service that its
    settings class does not read."""
    read = {f"{prefix}{field.upper()}" for field in cls.model_fields}
    given = {key for key in environment(svc) if key.startswith(prefix)}
    return (given | {target.upper() for target in mounts(svc)}) - read


def test_services_get_settings_they_accept(
    compose: dict[str, Any], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment and the secrets files compose gives each service validate with the
    settings class that service really reads, everything given is something it reads, the
    coordinators would start (no startup problem), they and each participant agree on its
    secret, the tokens are where they are needed, and every service binds outside the
    container."""
    svcs = services(compose)

    for name in COORDINATORS:
        coord_env = environment(svcs[name])
        assert not unread(Settings, "TXN_", svcs[name]), name
        coord = service_settings(compose, name, folder, monkeypatch)
        assert coord.production, name
        assert startup_problems(coord) == []  # tokens, and a secret for every participant
        assert coord.host == "0.0.0.0", name
        assert coord.instance_id == name
        healthcheck = " ".join(map(str, svcs[name]["healthcheck"]["test"]))
        assert f":{coord.port}/healthz" in healthcheck, name
        assert all(
            host_ports(p) and str(p).endswith(f":{coord.port}") for p in svcs[name]["ports"]
        ), name
        # The registry JSON is what TXN_PARTICIPANTS really parses to.
        assert set(coord.participants) == set(json.loads(coord_env["TXN_PARTICIPANTS"]))
        assert set(coord.participants) == {*LEDGERS, *SHOP}
        assert set(coord.participant_secrets) == set(coord.participants)
    # What the participants check against: the coordinators differ only in their instance id.
    coord = service_settings(compose, COORDINATORS[0], folder, monkeypatch)

    checked = set()
    for name, svc in svcs.items():
        module = participant_module(svc)
        if module is None:
            continue
        assert command_lines(svc["command"]) == [["python", "-m", module]], name
        cls = settings_class(module)
        ignored = unread(cls, "TXNP_", svc)
        assert not ignored, f"service {name}: {cls.__name__} does not read {sorted(ignored)}"
        settings = service_settings(compose, name, folder, monkeypatch)
        assert environment(svc).get("TXNP_NAME") == name == settings.name
        assert settings.host == "0.0.0.0", name
        # Its own secret, the one the coordinators sign its calls with.
        assert settings.secrets() == coord.secrets_of(name)[:1], name
        assert settings.tokens(), f"{name}: its business endpoints would accept no token"
        # The doubt resolver (and orders' submissions) reach the coordinators by the alias
        # every coordinator service answers to.
        assert settings.coordinators == [f"http://{COORDINATOR_ALIAS}:{coord.port}"], name
        assert f":{settings.port}/healthz" in " ".join(map(str, svc["healthcheck"]["test"]))
        assert all(host_ports(p) and str(p).endswith(f":{settings.port}") for p in svc["ports"]), (
            name
        )
        checked.add(name)
    assert checked == {*LEDGERS, *SHOP}
    shipping = service_settings(compose, "shipping", folder, monkeypatch)
    assert "atlantis" in [d.lower() for d in shipping.blocked_destinations]  # the demo's refusal
    # orders submits with a token the coordinators accept for submitting and reading.
    orders = service_settings(compose, "orders", folder, monkeypatch)
    token = coord.tokens().get(token_hash(orders.coordinator_token.get_secret_value()))
    assert token is not None and token.allows("submit") and token.allows("read")


def test_connections_fit_in_max_connections(
    compose: dict[str, Any], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the stack can open at most (each service's pools at their fullest, as the code
    sizes them) fits in Postgres' max_connections less the superuser's reserved 3, and is what
    docs/configuration.md says."""
    svcs = services(compose)
    argv = command_lines(svcs["postgres"]["command"])[0]
    server = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv[:-1]) if a == "-c")
    available = int(server["max_connections"]) - int(
        server.get("superuser_reserved_connections", "3")
    )
    # coordinator.pglog: two asyncpg pools of pool_size (hot, progress) and a SQLAlchemy pool of
    # max(2, pool_size // 8) with as much overflow; for each coordinator service (one container
    # each: no replicas).
    total = 0
    coordinators = coordinator_services(svcs)
    for name in coordinators:
        assert (svcs[name].get("deploy") or {}).get("replicas", 1) == 1, name
        coord = service_settings(compose, name, folder, monkeypatch)
        total += 2 * coord.pool_size + 2 * max(2, coord.pool_size // 8)
    participants = 0
    for name, svc in svcs.items():
        if participant_module(svc) is not None:
            # participants.sdk.db.make_engine: pool_size, and as much overflow.
            total += 2 * service_settings(compose, name, folder, monkeypatch).pool_size
            participants += 1
    assert total <= available, f"the stack may open {total} connections; {available} allowed"
    text = re.sub(r"\s+", " ", (ROOT / "docs" / "configuration.md").read_text())
    assert f"= {total} at most" in text, f"docs/configuration.md should count {total}"
    assert participants == 7
    assert len(coordinators) == 2


def row_problem(var: str, info: Any, cells: list[str]) -> str | None:
    """Why this docs row does not document the setting truthfully (None: it does)."""
    if len(cells) < 3:
        return "the row needs a default and a meaning"
    default_cell, meaning = cells[1].replace("`", ""), " | ".join(cells[2:])
    if info.description and info.description not in meaning:
        return f"the meaning lacks the Field description {info.description!r}"
    if info.default_factory is not None:
        return None
    default = info.default
    if isinstance(default, SecretStr):  # its str() is a mask
        default = default.get_secret_value()
    if isinstance(default, bool):
        ok = default_cell.lower() == str(default).lower()
    elif isinstance(default, int | float):
        try:
            ok = float(default_cell) == default
        except ValueError:
            ok = False
    elif default == "":
        ok = default_cell in ("(empty)", "")
    else:
        ok = default_cell == str(default)
    return None if ok else f"default {default_cell!r} is not the code's {default!r}"


def test_every_setting_is_documented_with_its_default(docs: dict[str, list[list[str]]]) -> None:
    problems = []
    for cls, prefix in SETTINGS:
        for field_name, info in own_fields(cls).items():
            var = f"{prefix}{field_name.upper()}"
            if var not in docs:
                problems.append(f"{var} ({cls.__name__}.{field_name}) is not documented")
                continue
            # A variable may have several rows (e.g. also in the compose table): one must be
            # the settings row, with the real default and the Field description.
            found = [row_problem(var, info, cells) for cells in docs[var]]
            if None not in found:
                problems.append(f"{var}: {found[0]}")
    assert not problems, "\n".join(problems)


def test_dev_stack_variables_are_documented(docs: dict[str, list[list[str]]]) -> None:
    assert {"TXN_PG_BINDIR", "TXN_PG_USER"} <= set(docs)


def test_nothing_documented_that_does_not_exist(docs: dict[str, list[list[str]]]) -> None:
    known = {f"{prefix}{name.upper()}" for cls, prefix in SETTINGS for name in cls.model_fields} | {
        "TXN_PG_BINDIR",
        "TXN_PG_USER",
        "POSTGRES_PASSWORD_FILE",  # compose's postgres service: the postgres image reads it
    }
    assert set(docs) <= known, f"documented but unknown: {sorted(set(docs) - known)}"


# -- the checks themselves catch breakage --------------------------------------------------


def test_checks_reject_broken_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AssertionError):
        check_project_command("x", ["txn", "serv"], monkeypatch)
    with pytest.raises(pytest.fail.Exception):
        check_project_command(
            "x", ["txn", "migrate", "--target", "nope", "--dsn", "d"], monkeypatch
        )
    with pytest.raises(pytest.fail.Exception):
        check_project_command("x", ["txn", "serve", "--bogus"], monkeypatch)
    with pytest.raises(AssertionError):
        check_project_command("x", ["python", "-m", "participants.nope"], monkeypatch)
    with pytest.raises(AssertionError):
        check_project_command("x", ["python", "-m", "participants.sdk"], monkeypatch)  # no __main__
    with pytest.raises(pytest.fail.Exception):
        check_project_command("x", ["uvicorn", "app:app"], monkeypatch)
    assert host_ports("127.0.0.1:8000-8001:8000") == [8000, 8001]
    assert host_ports("8101:8101/tcp") == [8101]
    assert host_ports("5432") == []
    assert command_lines(["sh", "-c", "txn migrate --dsn a && python -m b"]) == [
        ["txn", "migrate", "--dsn", "a"],
        ["python", "-m", "b"],
    ]
    # Compose turns $$ into $ before the shell sees it; an assignment is not the command.
    line = command_lines(["sh", "-c", 'P="$$(cat f)" Q=1 txn serve'])[0]
    assert line == ["P=$(cat f)", "Q=1", "txn", "serve"]
    assert split_assignments(line) == ({"P": "$(cat f)", "Q": "1"}, ["txn", "serve"])
    assert check_project_command("x", line, monkeypatch).command == "serve"  # type: ignore[union-attr]
    assert documented_rows("| `A_B` | 1 | x |\n| Variable | Default |") == {
        "A_B": [["`A_B`", "1", "x"]]
    }
    dsn = Settings.model_fields["log_dsn"]
    doc = str(dsn.description)
    # A SecretStr default is documented by its value, not its mask.
    assert row_problem("TXN_LOG_DSN", dsn, ["`TXN_LOG_DSN`", "`**********`", doc]) is not None
    real = dsn.default.get_secret_value()
    assert row_problem("TXN_LOG_DSN", dsn, ["`TXN_LOG_DSN`", f"`{real}`", doc]) is None
    lease = Settings.model_fields["lease_s"]
    assert row_problem("TXN_LEASE_S", lease, ["`TXN_LEASE_S`", "`3.0`", "x"]) is not None
    assert row_problem("TXN_LEASE_S", lease, ["`TXN_LEASE_S`", "`4`", str(lease.description)])
    assert (
        row_problem("TXN_LEASE_S", lease, ["`TXN_LEASE_S`", "`3`", str(lease.description)]) is None
    )
    assert migration_target("participants.ledger") == "ledger"
    assert migration_target("participants.orders") == "orders"
    assert participant_module({"command": ["python", "-m", "participants.orders"]}) == (
        "participants.orders"
    )
    assert participant_module({"command": ["txn", "serve"]}) is None
    serving = {"a": {"command": ["txn", "serve"]}, "b": {"command": "txn"}}
    assert coordinator_services(serving) == ["a"]
    assert network_aliases({"networks": {"default": {"aliases": ["c"]}}}) == {"c"}
    assert network_aliases({"networks": ["default"]}) == network_aliases({}) == set()
    assert own_fields(settings_class("participants.shipping")).keys() == {"blocked_destinations"}
    assert dependency_cycle({"a": {"depends_on": ["b"]}, "b": {"depends_on": {"a": {}}}})
    assert dependency_cycle({"a": {"depends_on": ["b"]}, "b": {}}) is None


def _with_env(svcs: dict[str, dict[str, Any]], name: str, **env: str | None) -> Any:
    broken = copy.deepcopy(svcs)
    for key, value in env.items():
        if value is None:
            broken[name]["environment"].pop(key)
        else:
            broken[name]["environment"][key] = value
    return broken


def test_cross_checks_catch_a_broken_compose(
    compose: dict[str, Any], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry and migration checks report what a plausible mistake would break."""
    svcs = services(compose)
    registry = json.loads(environment(svcs["coordinator1"])["TXN_PARTICIPANTS"])

    def with_registry(name: str = "coordinator1", **changes: str | None) -> Any:
        reg = {k: v for k, v in {**registry, **changes}.items() if v is not None}
        return _with_env(svcs, name, TXN_PARTICIPANTS=json.dumps(reg))

    assert registry_problems(with_registry(payments="http://payments:8299"))
    assert registry_problems(with_registry(billing="http://billing:8300"))
    assert registry_problems(with_registry(orders=None))  # a service the registry lacks
    assert registry_problems(with_registry(shipping="http://payments:8204"))
    assert registry_problems(with_registry("coordinator2", ledger3=None))  # each is checked
    assert registry_problems(_with_env(svcs, "inventory", TXNP_PORT="8299"))
    assert registry_problems({k: v for k, v in svcs.items() if k not in COORDINATORS})

    migrated = migrated_databases(svcs, monkeypatch)

    def problems(data: dict[str, Any], migrated: dict[str, str]) -> list[str]:
        return migration_problems(data, migrated, folder)

    assert not problems(compose, migrated)
    assert problems(compose, {**migrated, "inventory": "payments"})
    assert problems(compose, {**migrated, "ledger2": "orders"})
    assert problems(compose, {k: v for k, v in migrated.items() if k != "shipping"})
    assert problems(compose, {k: v for k, v in migrated.items() if k != "txn_log"})
    assert problems(with_secret(compose, "orders", "txnp_dsn", "ledger1_dsn"), migrated)
    assert problems(with_secret(compose, "coordinator2", "txn_log_dsn", "orders_dsn"), migrated)
    no_module = copy.deepcopy(compose)
    no_module["services"]["payments"]["command"] = ["txn", "serve"]
    assert problems(no_module, migrated)
