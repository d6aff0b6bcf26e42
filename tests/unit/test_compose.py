"""Static checks of compose.yaml (Docker cannot run here): every command it runs exists in this
package, every variable it uses is documented, ports do not clash, and the settings it gives the
services are ones those services accept. Also: every setting is documented in
docs/configuration.md with its real default."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from coordinator import cli
from coordinator.settings import Settings
from participants.sdk.settings import ParticipantSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCS = ROOT / "docs" / "configuration.md"
DOCKERFILE = ROOT / "Dockerfile"
INITDB = ROOT / "deploy" / "initdb.sql"

SETTINGS: list[tuple[type[BaseSettings], str]] = [
    (Settings, "TXN_"),
    (ParticipantSettings, "TXNP_"),
]
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
    assert {"postgres", "migrate", "coordinator", "ledger1", "ledger2", "ledger3"} <= set(svcs)
    for name, svc in svcs.items():
        assert isinstance(svc, dict), name
        assert "image" in svc or "build" in svc, f"service {name} has neither image nor build"


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
    assert checked >= 6  # migrate (4 lines), coordinator, ledgers


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
    assert databases_created() >= {"txn_log", "ledger1", "ledger2", "ledger3"}


def test_migrations_cover_every_database_a_service_uses(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    svcs = services(compose)
    migrated: dict[str, str] = {}
    for line in command_lines(svcs["migrate"]["command"]):
        ns = check_project_command("migrate", line, monkeypatch)
        assert isinstance(ns, argparse.Namespace) and ns.command == "migrate"
        migrated[database_of(ns.dsn)] = ns.target
    assert migrated == {
        "txn_log": "coordinator",
        "ledger1": "ledger",
        "ledger2": "ledger",
        "ledger3": "ledger",
    }
    assert set(migrated) <= databases_created()
    coordinator_env = environment(svcs["coordinator"])
    assert migrated[database_of(interpolate(coordinator_env["TXN_LOG_DSN"]))] == "coordinator"
    for name in ("ledger1", "ledger2", "ledger3"):
        dsn = interpolate(environment(svcs[name])["TXNP_DSN"])
        assert migrated[database_of(dsn)] == "ledger", name


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
    for name in ("coordinator", "ledger1", "ledger2", "ledger3"):
        deps = svcs[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert svcs["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_services_get_settings_they_accept(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment compose gives each service validates with the real settings classes,
    binds outside the container, and the registry points at the ledgers' real ports."""
    svcs = services(compose)

    def settings_of(cls: type[BaseSettings], env: dict[str, str]) -> Any:
        with monkeypatch.context() as m:
            for key in list(os.environ):
                if key.upper().startswith(("TXN_", "TXNP_")):
                    m.delenv(key)
            for key, value in env.items():
                m.setenv(key, interpolate(value))
            return cls()

    coord_env = environment(svcs["coordinator"])
    coord = settings_of(Settings, coord_env)
    assert coord.production and coord.hmac_secret
    assert coord.host == "0.0.0.0"
    healthcheck = " ".join(map(str, svcs["coordinator"]["healthcheck"]["test"]))
    assert f":{coord.port}/healthz" in healthcheck
    assert all(
        host_ports(p) and str(p).endswith(f":{coord.port}") for p in svcs["coordinator"]["ports"]
    )
    # The registry JSON is what TXN_PARTICIPANTS really parses to.
    assert set(json.loads(coord_env["TXN_PARTICIPANTS"])) == {"ledger1", "ledger2", "ledger3"}

    for name, url in coord.participants.items():
        assert name in svcs, f"registry names {name}, which is not a service"
        svc = svcs[name]
        lines = command_lines(svc["command"])
        assert lines == [["python", "-m", "participants.ledger"]]
        participant_env = environment(svc)
        ledger = settings_of(ParticipantSettings, participant_env)
        assert participant_env.get("TXNP_NAME") == name
        assert ledger.host == "0.0.0.0"
        assert ledger.hmac_secret == coord.hmac_secret  # same ${TXN_HMAC_SECRET}
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == (name, ledger.port), url
        assert f":{ledger.port}/healthz" in " ".join(map(str, svc["healthcheck"]["test"]))


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
        for field_name, info in cls.model_fields.items():
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
            "x", ["txn", "migrate", "--target", "orders", "--dsn", "d"], monkeypatch
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
