"""What the static checks of compose.yaml share (tests/unit/test_compose.py,
tests/unit/test_compose_secrets.py): loading the file, reading its services' environments,
commands and secrets as compose would give them, parsing ``txn`` commands with the real parser,
the settings classes each service reads, and the cross-checks between services. Docker cannot
run here: the secrets files compose mounts are made by deploy/make_secrets.py into a temporary
folder, standing in for ./secrets/."""

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
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

import participants
from coordinator import cli
from coordinator.settings import Settings
from migrations import TARGETS
from participants.sdk.settings import ParticipantSettings
from txn_devstack.stack import SHOP

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCS = ROOT / "docs" / "configuration.md"
DOCKERFILE = ROOT / "Dockerfile"
INITDB = ROOT / "deploy" / "initdb.sql"
MAKE_SECRETS = ROOT / "deploy" / "make_secrets.py"
SECRETS_FOLDER = "./secrets/"  # where compose.yaml's secrets files are, relative to it
SECRETS_DIR = "/run/secrets"  # where compose mounts them in a container

LEDGERS = ("ledger1", "ledger2", "ledger3")
# compose.yaml's coordinator services (one container each, each with its own TXN_INSTANCE_ID),
# and the network alias both answer to: the host name of the participants' TXNP_COORDINATORS
# (in Kubernetes, the one Deployment and Service of that name).
COORDINATORS = ("coordinator1", "coordinator2")
COORDINATOR_ALIAS = "coordinator"
PARTICIPANT_PREFIX = "participants."
# ${VAR}, ${VAR:-default}, ${VAR:?error}, ... (but not $${VAR}, which is a literal for the shell)
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN")
# A shell variable assignment before a command (``PGPASSWORD="$(cat ...)" txn migrate ...``).
ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.S)


# -- loading -------------------------------------------------------------------------------


def unshared(node: Any) -> Any:
    """A copy sharing no mutable part: YAML gives every service merging an anchor the same
    objects (the coordinators' secrets list, healthcheck, ...), compose gives each its own."""
    if isinstance(node, dict):
        return {key: unshared(value) for key, value in node.items()}
    if isinstance(node, list):
        return [unshared(value) for value in node]
    return node


def load_compose(text: str | None = None) -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text() if text is None else text)
    assert isinstance(data, dict), "compose.yaml is not a mapping"
    return dict(unshared(data))


def services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = data.get("services")
    assert isinstance(svcs, dict) and svcs, "compose.yaml has no services"
    return svcs


def coordinator_services(svcs: dict[str, dict[str, Any]]) -> list[str]:
    """The services running the coordinator (``txn serve``): compose.yaml's coordinator1 and
    coordinator2, or the ``coordinator`` of the Kubernetes manifests read as compose."""
    return [
        name
        for name, svc in svcs.items()
        if command_lines(svc.get("command") or []) == [["txn", "serve"]]
    ]


def network_aliases(service: dict[str, Any]) -> set[str]:
    """The names a service answers to on the default network besides its service name."""
    networks = service.get("networks") or {}
    if not isinstance(networks, dict):  # a list of network names: no aliases
        return set()
    return {str(alias) for alias in (networks.get("default") or {}).get("aliases") or []}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def interpolate(value: str) -> str:
    """Substitute compose variables with stand-ins, as if the user had set them all; ``$$`` is
    compose's escape of a literal ``$``."""
    return VAR_REF.sub(lambda m: f"x-{m.group(1).lower()}", value).replace("$$", "$")


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


def split_assignments(line: list[str]) -> tuple[dict[str, str], list[str]]:
    """``["A=1", "B=2", "cmd", ...]`` -> ({"A": "1", "B": "2"}, ["cmd", ...])."""
    assigned: dict[str, str] = {}
    for i, word in enumerate(line):
        match = ASSIGNMENT.fullmatch(word)
        if match is None:
            return assigned, line[i:]
        assigned[match.group(1)] = match.group(2)
    return assigned, []


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


def databases_created(text: str | None = None) -> set[str]:
    return {
        m.group(1).strip('"')
        for m in re.finditer(
            r"CREATE\s+DATABASE\s+(\"?\w+\"?)", INITDB.read_text() if text is None else text, re.I
        )
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
    cls: type[BaseSettings],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    secrets: dict[str, str] | None = None,
) -> Any:
    """``cls()`` as the service would build it from exactly this (interpolated) environment and
    these files in /run/secrets (file name -> content)."""
    with monkeypatch.context() as m, tempfile.TemporaryDirectory() as run_secrets:
        for key in list(os.environ):
            if key.upper().startswith(("TXN_", "TXNP_")):
                m.delenv(key)
        for key, value in env.items():
            m.setenv(key, interpolate(value))
        if secrets is None:
            return cls()
        for name, content in secrets.items():
            Path(run_secrets, name).write_text(content)
        return cls(_secrets_dir=run_secrets)


# -- secrets -------------------------------------------------------------------------------


def make_secrets() -> ModuleType:
    """deploy/make_secrets.py (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("make_secrets", MAKE_SECRETS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate_secrets(folder: Path) -> str:
    """What ``python3 deploy/make_secrets.py`` writes into ./secrets/, into ``folder``; returns
    the admin token it prints."""
    admin: str = make_secrets().write(folder)
    return admin


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """The secrets a service mounts: target (file name in /run/secrets) -> compose secret."""
    found: dict[str, str] = {}
    for entry in service.get("secrets") or []:
        if isinstance(entry, str):
            source = target = entry
        else:
            source = str(entry["source"])
            target = str(entry.get("target", source))
        assert target not in found, f"two secrets mounted as {target}"
        found[target] = source
    return found


def secret_path(data: dict[str, Any], source: str, folder: Path) -> Path | None:
    """The file a compose secret is read from, in ``folder`` standing in for ./secrets/;
    None unless it is a file of ./secrets/."""
    spec = (data.get("secrets") or {}).get(source)
    if not isinstance(spec, dict) or set(spec) != {"file"}:
        return None
    file = str(spec["file"])
    if not file.startswith(SECRETS_FOLDER) or ".." in file:
        return None
    return folder / file.removeprefix(SECRETS_FOLDER)


def mounted(data: dict[str, Any], name: str, folder: Path) -> dict[str, str]:
    """What service ``name`` finds in /run/secrets: file name -> content."""
    found = {}
    for target, source in mounts(services(data)[name]).items():
        path = secret_path(data, source, folder)
        assert path is not None, f"service {name}: secret {source} is not a file of ./secrets/"
        assert path.is_file(), f"deploy/make_secrets.py does not write {source}"
        found[target] = path.read_text()
    return found


def secrets_folder(data: dict[str, Any], name: str, folder: Path, into: Path) -> Path:
    """/run/secrets of service ``name``, copied into ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    for target, source in mounts(services(data)[name]).items():
        path = secret_path(data, source, folder)
        assert path is not None, source
        shutil.copy(path, into / target)
    return into


def with_secret(data: dict[str, Any], name: str, target: str, source: str) -> dict[str, Any]:
    """A copy of ``data`` where service ``name`` is given compose secret ``source`` as
    ``target`` (instead of what it had there)."""
    changed = copy.deepcopy(data)
    svc = changed["services"][name]
    kept = [e for e in svc.get("secrets") or [] if target not in mounts({"secrets": [e]})]
    svc["secrets"] = [*kept, {"source": source, "target": target}]
    return changed


def service_dsn(data: dict[str, Any], name: str, folder: Path) -> tuple[str, str] | None:
    """(variable, DSN) of the database service ``name`` uses: TXN_LOG_DSN or TXNP_DSN, from its
    environment or its /run/secrets; None if it has neither."""
    env = environment(services(data)[name])
    for var in ("TXN_LOG_DSN", "TXNP_DSN"):
        if var in env:
            return var, interpolate(env[var])
        if var.lower() in mounts(services(data)[name]):
            return var, mounted(data, name, folder)[var.lower()].strip()
    return None


def service_settings(
    data: dict[str, Any], name: str, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """The settings service ``name`` runs with: its settings class built from its environment
    and its /run/secrets."""
    svc = services(data)[name]
    module = participant_module(svc)
    cls: type[BaseSettings] = Settings if module is None else settings_class(module)
    return settings_of(cls, environment(svc), monkeypatch, mounted(data, name, folder))


# -- cross-checks between services ---------------------------------------------------------


def registry_problems(svcs: dict[str, dict[str, Any]]) -> list[str]:
    """Where a coordinator service's TXN_PARTICIPANTS and the participant services disagree:
    every name must be a service reached by its service name at its TXNP_PORT, and every
    participant service must be in the registry (or no transaction can use it)."""
    coordinators = coordinator_services(svcs)
    if not coordinators:
        return ["no service runs txn serve"]
    default_port = ParticipantSettings.model_fields["port"].default
    problems = []
    for coordinator in coordinators:
        registry = json.loads(environment(svcs[coordinator])["TXN_PARTICIPANTS"])
        for name, url in registry.items():
            if name not in svcs:
                problems.append(f"{coordinator}: the registry names {name}, not a service")
                continue
            port = interpolate(environment(svcs[name]).get("TXNP_PORT", str(default_port)))
            parts = urlsplit(url)
            if parts.hostname != name:
                problems.append(f"{coordinator}: {name}: {url} is not the service's host name")
            if str(parts.port) != port:
                problems.append(f"{coordinator}: {name}: {url}, but its TXNP_PORT is {port}")
        for name, svc in svcs.items():
            if participant_module(svc) is not None and name not in registry:
                problems.append(f"{coordinator}: participant {name} missing from the registry")
    return problems


def migrate_commands(
    svcs: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> list[tuple[dict[str, str], argparse.Namespace]]:
    """Every ``txn migrate`` line of the migrate job: (its shell assignments, its arguments)."""
    found = []
    for line in command_lines(svcs["migrate"]["command"]):
        assigned, _argv = split_assignments(line)
        ns = check_project_command("migrate", line, monkeypatch)
        assert isinstance(ns, argparse.Namespace) and ns.command == "migrate", line
        found.append((assigned, ns))
    return found


def migrated_databases(
    svcs: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """database -> target, for every ``txn migrate`` line of the migrate job."""
    migrated: dict[str, str] = {}
    for _assigned, ns in migrate_commands(svcs, monkeypatch):
        assert database_of(ns.dsn) not in migrated, f"{ns.dsn} is migrated twice"
        migrated[database_of(ns.dsn)] = ns.target
    return migrated


def migration_problems(data: dict[str, Any], migrated: dict[str, str], folder: Path) -> list[str]:
    """Every database a service uses (TXN_LOG_DSN, TXNP_DSN: in its environment or its
    secrets) must be migrated with the target that service needs, and no two participant
    services may share one."""
    problems = []
    owner: dict[str, str] = {}
    for name, svc in services(data).items():
        found = service_dsn(data, name, folder)
        if found is None:
            continue
        var, dsn = found
        db = database_of(dsn)
        if var == "TXN_LOG_DSN":
            target = "coordinator"
        else:
            module = participant_module(svc)
            if module is None:
                problems.append(f"service {name} has a TXNP_DSN but runs no participant module")
                continue
            target = migration_target(module)
            if db in owner:
                problems.append(f"services {owner[db]} and {name} share the database {db}")
            owner[db] = name
        if target not in TARGETS:
            problems.append(f"service {name} needs target {target}, which does not exist")
        elif db not in migrated:
            problems.append(f"service {name}: database {db} is not migrated ({target})")
        elif migrated[db] != target:
            problems.append(
                f"service {name}: database {db} is migrated as {migrated[db]}, it needs {target}"
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


def parse_txn(argv: list[str]) -> argparse.Namespace:
    """Parse ``txn <argv>`` with coordinator.cli's real parser, without running anything."""
    try:
        return cli.build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"txn {shlex.join(argv)} does not parse (exit {e.code})")


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
    """One command line of a service built from this project (after any shell variable
    assignments); returns what it runs."""
    _assigned, line = split_assignments(line)
    assert line, f"service {name}: empty command"
    if line[0] == "txn":
        assert len(line) >= 2, f"service {name}: bare 'txn'"
        check_txn_subcommand(line[1])
        return parse_txn(line[1:])
    if line[0] in ("python", "python3") and len(line) >= 3 and line[1] == "-m":
        check_module(line[2])
        return line[2]
    pytest.fail(f"service {name}: command {shlex.join(line)!r} is neither txn nor python -m")
