"""Static checks of compose.yaml (Docker cannot run here): every command it runs exists in this
package, every variable it uses is documented, ports do not clash, the settings it gives the
services are ones those services accept, the coordinators' registry matches the participant
services and their ports, and every database a service uses is migrated with the target that
service needs. Also: every setting is documented in docs/configuration.md with its real
default."""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import os
import pkgutil
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

import participants
from coordinator import cli
from coordinator.settings import Settings
from devstack.stack import SHOP
from migrations import TARGETS
from participants.sdk.settings import ParticipantSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCS = ROOT / "docs" / "configuration.md"
DOCKERFILE = ROOT / "Dockerfile"
INITDB = ROOT / "deploy" / "initdb.sql"

LEDGERS = ("ledger1", "ledger2", "ledger3")
PARTICIPANT_PREFIX = "participants."
# ${VAR}, ${VAR:-default}, ${VAR:?error}, ... (but not $${VAR}, which is a literal for the shell)
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN")


# -- loading -------------------------------------------------------------------------------


def load_compose(text: str | None = None) -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text() if text is None else text)
    assert isinstance(data, dict), "compose.yaml is not a mapping"
    return data


def services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = data.get("services")
    assert isinstance(svcs, dict) and svcs, "compose.yaml has no services"
    return svcs


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def interpolate(value: str) -> str:
    """Substitute compose variables with stand-ins, as if the user had set them all."""
    return VAR_REF.sub(lambda m: f"x-{m.group(1).lower()}", value)


def command_lines(command: Any) -> list[list[str]]:
    """A service command as the argv lists it runs (``sh -c`` scripts split on && ; newlines)."""
    # Compose substitutes variables in the whole file before any shell sees the command.
    if isinstance(command, str):
        argv = shlex.split(interpolate(command))
    else:
        argv = [interpolate(str(a)) for a in command]
    if len(argv) >= 3 and argv[0] in ("sh", "bash", "/bin/sh", "/bin/bash") and "-c" in argv:
        script = argv[argv.index("-c") + 1]
        parts = re.split(r"&&|\|\||;|\n", script)
        return [shlex.split(p) for p in parts if p.strip() and p.strip() != "set -e"]
    return [argv]


def documented_rows(text: str | None = None) -> dict[str, list[list[str]]]:
    """Variables listed in docs/configuration.md tables: name -> the cells of each of its rows
    (a variable may appear in several tables, e.g. the settings and the compose ones)."""
    rows: dict[str, list[list[str]]] = {}
    for line in (DOCS.read_text() if text is None else text).splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        if match:
            rows.setdefault(match.group(1), []).append(cells)
    return rows


def host_ports(spec: Any) -> list[int]:
    """Host ports a ``ports`` entry publishes (ranges expanded); none for container-only."""
    if isinstance(spec, dict):
        published = spec.get("published")
        raw = "" if published is None else str(published)
    else:
        text = str(spec).split("/")[0]
        parts = text.rsplit(":", 2)
        if len(parts) == 1:
            return []
        raw = parts[-2]
    if not raw:
        return []
    if "-" in raw:
        lo, hi = (int(p) for p in raw.split("-"))
        return list(range(lo, hi + 1))
    return [int(raw)]


def databases_created() -> set[str]:
    return {
        m.group(1).strip('"')
        for m in re.finditer(r"CREATE\s+DATABASE\s+(\"?\w+\"?)", INITDB.read_text(), re.I)
    }


def database_of(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def participant_module(service: dict[str, Any]) -> str | None:
    """The ``participants.X`` module a service runs (``python -m participants.X``), if any."""
    for line in command_lines(service.get("command") or []):
        if (
            len(line) >= 3
            and line[0] in ("python", "python3")
            and line[1] == "-m"
            and line[2].startswith(PARTICIPANT_PREFIX)
        ):
            return line[2]
    return None


def migration_target(module: str) -> str:
    """The migration target a participant module's database needs: its package name
    (``participants.orders`` -> ``orders``; every ledger instance -> ``ledger``)."""
    return module.removeprefix(PARTICIPANT_PREFIX).split(".")[0]


def settings_class(module: str) -> type[ParticipantSettings]:
    """The settings class ``python -m <module>`` reads: the ParticipantSettings subclass its
    ``app`` module defines."""
    app = importlib.import_module(f"{module}.app")
    found = [
        obj
        for obj in vars(app).values()
        if isinstance(obj, type)
        and issubclass(obj, ParticipantSettings)
        and obj.__module__ == app.__name__
    ]
    assert len(found) == 1, f"{app.__name__} defines {len(found)} settings classes"
    return found[0]


def service_settings_classes() -> list[type[ParticipantSettings]]:
    """The settings class of every runnable participant service in this package."""
    names = sorted(
        m.name
        for m in pkgutil.iter_modules(participants.__path__)
        if m.ispkg and importlib.util.find_spec(f"participants.{m.name}.__main__") is not None
    )
    assert {"ledger", *SHOP} <= set(names), names
    return [settings_class(f"participants.{name}") for name in names]


def own_fields(cls: type[BaseSettings]) -> dict[str, Any]:
    """The fields a settings class adds to ParticipantSettings (all, for the base classes).
    A service's subclass only renames the default TXNP_NAME besides, which is documented once."""
    if cls is ParticipantSettings or not issubclass(cls, ParticipantSettings):
        return dict(cls.model_fields)
    base = ParticipantSettings.model_fields
    return {name: info for name, info in cls.model_fields.items() if name not in base}


SETTINGS: list[tuple[type[BaseSettings], str]] = [
    (Settings, "TXN_"),
    (ParticipantSettings, "TXNP_"),
    *((cls, "TXNP_") for cls in service_settings_classes()),
]


def settings_of(
    cls: type[BaseSettings], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Any:
    """``cls()`` as the service would build it from exactly this (interpolated) environment."""
    with monkeypatch.context() as m:
        for key in list(os.environ):
            if key.upper().startswith(("TXN_", "TXNP_")):
                m.delenv(key)
        for key, value in env.items():
            m.setenv(key, interpolate(value))
        return cls()


# -- cross-checks between services ---------------------------------------------------------


def registry_problems(svcs: dict[str, dict[str, Any]]) -> list[str]:
    """Where the coordinators' TXN_PARTICIPANTS and the participant services disagree: every
    name must be a service reached by its service name at its TXNP_PORT, and every participant
    service must be in the registry (or no transaction can use it)."""
    registry = json.loads(environment(svcs["coordinator"])["TXN_PARTICIPANTS"])
    default_port = ParticipantSettings.model_fields["port"].default
    problems = []
    for name, url in registry.items():
        if name not in svcs:
            problems.append(f"the registry names {name}, which is not a service")
            continue
        port = interpolate(environment(svcs[name]).get("TXNP_PORT", str(default_port)))
        parts = urlsplit(url)
        if parts.hostname != name:
            problems.append(f"registry {name}: {url} is not the service's host name")
        if str(parts.port) != port:
            problems.append(f"registry {name}: {url}, but the service's TXNP_PORT is {port}")
    for name, svc in svcs.items():
        if participant_module(svc) is not None and name not in registry:
            problems.append(f"service {name} is a participant missing from the registry")
    return problems


def migrated_databases(
    svcs: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """database -> target, for every ``txn migrate`` line of the migrate job."""
    migrated: dict[str, str] = {}
    for line in command_lines(svcs["migrate"]["command"]):
        ns = check_project_command("migrate", line, monkeypatch)
        assert isinstance(ns, argparse.Namespace) and ns.command == "migrate", line
        assert database_of(ns.dsn) not in migrated, f"{ns.dsn} is migrated twice"
        migrated[database_of(ns.dsn)] = ns.target
    return migrated


def migration_problems(svcs: dict[str, dict[str, Any]], migrated: dict[str, str]) -> list[str]:
    """Every database a service uses (TXN_LOG_DSN, TXNP_DSN) must be migrated with the target
    that service needs, and no two participant services may share one."""
    problems = []
    owner: dict[str, str] = {}
    for name, svc in svcs.items():
        env = environment(svc)
        if "TXN_LOG_DSN" in env:
            needs = [(env["TXN_LOG_DSN"], "coordinator")]
        elif "TXNP_DSN" in env:
            module = participant_module(svc)
            if module is None:
                problems.append(f"service {name} has a TXNP_DSN but runs no participant module")
                continue
            needs = [(env["TXNP_DSN"], migration_target(module))]
            db = database_of(interpolate(env["TXNP_DSN"]))
            if db in owner:
                problems.append(f"services {owner[db]} and {name} share the database {db}")
            owner[db] = name
        else:
            continue
        for dsn, target in needs:
            db = database_of(interpolate(dsn))
            if target not in TARGETS:
                problems.append(f"service {name} needs target {target}, which does not exist")
            elif db not in migrated:
                problems.append(f"service {name}: database {db} is not migrated ({target})")
            elif migrated[db] != target:
                problems.append(
                    f"service {name}: database {db} is migrated as {migrated[db]}, "
                    f"it needs {target}"
                )
    return problems


def dependency_cycle(svcs: dict[str, dict[str, Any]]) -> list[str] | None:
    """A depends_on cycle (compose refuses to start one), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        if state.get(name) == 1:
            return [*path[path.index(name) :], name]
        if state.get(name) == 2 or name not in svcs:
            return None
        state[name] = 1
        for dep in svcs[name].get("depends_on") or {}:
            cycle = visit(dep, [*path, name])
            if cycle:
                return cycle
        state[name] = 2
        return None

    for name in svcs:
        cycle = visit(name, [])
        if cycle:
            return cycle
    return None


# -- checks of commands --------------------------------------------------------------------


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


def parse_txn(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Parse ``txn <argv>`` with coordinator.cli's real parser, without running anything."""
    original = argparse.ArgumentParser.parse_args

    def parse_only(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Parsed(original(self, *args, **kwargs))

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_only)
        try:
            cli.main(argv)
        except _Parsed as done:
            return done.namespace
        except SystemExit as e:
            pytest.fail(f"txn {shlex.join(argv)} does not parse (exit {e.code})")
    pytest.fail(f"txn {shlex.join(argv)}: the parser was never reached")


def check_txn_subcommand(sub: str) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([sub, "--help"])
    assert exited.value.code == 0, f"'txn {sub}' is not a subcommand of coordinator.cli"


def check_module(module: str) -> None:
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"python -m {module}: no such module"
    main = (
        importlib.util.find_spec(f"{module}.__main__") if spec.submodule_search_locations else spec
    )
    assert main is not None, f"python -m {module}: the package has no __main__"


def check_project_command(
    name: str, line: list[str], monkeypatch: pytest.MonkeyPatch
) -> argparse.Namespace | str:
    """One command line of a service built from this project; returns what it runs."""
    assert line, f"service {name}: empty command"
    if line[0] == "txn":
        assert len(line) >= 2, f"service {name}: bare 'txn'"
        check_txn_subcommand(line[1])
        return parse_txn(line[1:], monkeypatch)
    if line[0] in ("python", "python3") and len(line) >= 3 and line[1] == "-m":
        check_module(line[2])
        return line[2]
    pytest.fail(f"service {name}: command {shlex.join(line)!r} is neither txn nor python -m")


# -- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def docs() -> dict[str, list[list[str]]]:
    return documented_rows()


def test_compose_is_valid_yaml_with_the_expected_services(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    assert {"postgres", "migrate", "coordinator", *LEDGERS} <= set(svcs)
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
    assert checked >= 16  # migrate (8 lines), coordinator, 3 ledgers, 4 shop services


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
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each service's database is migrated with the target its module needs
    (``python -m participants.X`` -> ``X``), and exists on the server."""
    svcs = services(compose)
    migrated = migrated_databases(svcs, monkeypatch)
    problems = migration_problems(svcs, migrated)
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
    referenced = {m.group(1) for m in VAR_REF.finditer(COMPOSE.read_text())}
    assert referenced >= {"POSTGRES_PASSWORD", "TXN_HMAC_SECRET"}
    missing = referenced - set(docs)
    assert not missing, f"compose.yaml references undocumented variables: {sorted(missing)}"
    for name, svc in services(compose).items():
        undocumented = set(environment(svc)) - set(docs)
        assert not undocumented, f"service {name} sets undocumented {sorted(undocumented)}"


def test_secrets_are_required_not_defaulted(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for m in VAR_REF.finditer(text):
        name, modifier = m.groups()
        if any(word in name for word in SECRET_WORDS):
            assert modifier.startswith(":?") and len(modifier) > 2, (
                f"${{{name}{modifier}}}: a secret must be required with ${{{name}:?message}}"
            )
    for name, svc in services(compose).items():
        for key, value in environment(svc).items():
            if any(word in key for word in SECRET_WORDS):
                assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}", value), (
                    f"service {name}: {key} must be ${{VAR:?message}}, not {value!r}"
                )


def test_host_ports_are_unique(compose: dict[str, Any]) -> None:
    seen: dict[int, str] = {}
    for name, svc in services(compose).items():
        for spec in svc.get("ports", []):
            for port in host_ports(spec):
                assert port not in seen, f"host port {port}: {seen[port]} and {name}"
                seen[port] = name
    assert seen


def test_coordinator_replicas_have_a_host_port_each(compose: dict[str, Any]) -> None:
    coord = services(compose)["coordinator"]
    assert coord["deploy"]["replicas"] == 2
    ports = [p for spec in coord.get("ports", []) for p in host_ports(spec)]
    assert len(ports) >= coord["deploy"]["replicas"], "replicas would clash on one host port"
    assert "container_name" not in coord  # would forbid replicas


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
    for name in ("coordinator", *LEDGERS, *SHOP):
        deps = svcs[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
    assert svcs["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # orders submits every order to the coordinators.
    assert svcs["orders"]["depends_on"]["coordinator"]["condition"] == "service_healthy"
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


def test_services_get_settings_they_accept(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment compose gives each service validates with the settings class that
    service really reads, every variable set is one it reads, and it binds outside the
    container."""
    svcs = services(compose)

    coord_env = environment(svcs["coordinator"])
    coord = settings_of(Settings, coord_env, monkeypatch)
    assert coord.production and coord.hmac_secret
    assert coord.host == "0.0.0.0"
    healthcheck = " ".join(map(str, svcs["coordinator"]["healthcheck"]["test"]))
    assert f":{coord.port}/healthz" in healthcheck
    assert all(
        host_ports(p) and str(p).endswith(f":{coord.port}") for p in svcs["coordinator"]["ports"]
    )
    # The registry JSON is what TXN_PARTICIPANTS really parses to.
    assert set(coord.participants) == set(json.loads(coord_env["TXN_PARTICIPANTS"]))
    assert set(coord.participants) == {*LEDGERS, *SHOP}

    checked = set()
    for name, svc in svcs.items():
        module = participant_module(svc)
        if module is None:
            continue
        assert command_lines(svc["command"]) == [["python", "-m", module]], name
        cls = settings_class(module)
        participant_env = environment(svc)
        read = {f"TXNP_{field.upper()}" for field in cls.model_fields}
        ignored = {key for key in participant_env if key.startswith("TXNP_")} - read
        assert not ignored, f"service {name}: {cls.__name__} does not read {sorted(ignored)}"
        settings = settings_of(cls, participant_env, monkeypatch)
        assert participant_env.get("TXNP_NAME") == name == settings.name
        assert settings.host == "0.0.0.0", name
        assert settings.hmac_secret == coord.hmac_secret, name  # same ${TXN_HMAC_SECRET}
        # The doubt resolver (and orders' submissions) reach the coordinators by service name.
        assert settings.coordinators == [f"http://coordinator:{coord.port}"], name
        assert f":{settings.port}/healthz" in " ".join(map(str, svc["healthcheck"]["test"]))
        assert all(host_ports(p) and str(p).endswith(f":{settings.port}") for p in svc["ports"]), (
            name
        )
        checked.add(name)
    assert checked == {*LEDGERS, *SHOP}
    shipping = settings_of(
        settings_class("participants.shipping"), environment(svcs["shipping"]), monkeypatch
    )
    assert "atlantis" in [d.lower() for d in shipping.blocked_destinations]  # the demo's refusal


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
    assert {"TXN_PG_BINDIR", "TXN_PG_USER", "POSTGRES_PASSWORD"} <= set(docs)


def test_nothing_documented_that_does_not_exist(docs: dict[str, list[list[str]]]) -> None:
    known = {f"{prefix}{name.upper()}" for cls, prefix in SETTINGS for name in cls.model_fields} | {
        "TXN_PG_BINDIR",
        "TXN_PG_USER",
        "POSTGRES_PASSWORD",
        "TXN_HMAC_SECRET",
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
    assert documented_rows("| `A_B` | 1 | x |\n| Variable | Default |") == {
        "A_B": [["`A_B`", "1", "x"]]
    }
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
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry and migration checks report what a plausible mistake would break."""
    svcs = services(compose)
    registry = json.loads(environment(svcs["coordinator"])["TXN_PARTICIPANTS"])

    def with_registry(**changes: str | None) -> Any:
        reg = {k: v for k, v in {**registry, **changes}.items() if v is not None}
        return _with_env(svcs, "coordinator", TXN_PARTICIPANTS=json.dumps(reg))

    assert registry_problems(with_registry(payments="http://payments:8299"))
    assert registry_problems(with_registry(billing="http://billing:8300"))
    assert registry_problems(with_registry(orders=None))  # a service the registry lacks
    assert registry_problems(with_registry(shipping="http://payments:8204"))
    assert registry_problems(_with_env(svcs, "inventory", TXNP_PORT="8299"))

    migrated = migrated_databases(svcs, monkeypatch)
    assert not migration_problems(svcs, migrated)
    assert migration_problems(svcs, {**migrated, "inventory": "payments"})
    assert migration_problems(svcs, {**migrated, "ledger2": "orders"})
    assert migration_problems(svcs, {k: v for k, v in migrated.items() if k != "shipping"})
    assert migration_problems(svcs, {k: v for k, v in migrated.items() if k != "txn_log"})
    shared = environment(svcs["ledger1"])["TXNP_DSN"]
    assert migration_problems(_with_env(svcs, "orders", TXNP_DSN=shared), migrated)
    no_module = copy.deepcopy(svcs)
    no_module["payments"]["command"] = ["txn", "serve"]
    assert migration_problems(no_module, migrated)
