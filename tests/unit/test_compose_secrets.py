"""Static checks of compose.yaml's secrets hygiene and least privilege: every participant service
has a secret of its own, the coordinators all of them in one file; no secret is written in
compose.yaml, given in an environment or on a command line: they are files of ./secrets/
(deploy/make_secrets.py writes them; git and the image's build context leave them out), mounted
in /run/secrets; nobody connects to Postgres as its superuser: each database is owned by a role
of its own (deploy/initdb.sql) that owns nothing else, and each service and the migration job
connect as that owner."""

from __future__ import annotations

import copy
import json
import re
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from participants.sdk.tokens import parse_tokens, token_hash
from tests.unit.compose_support import (
    COMPOSE,
    COORDINATORS,
    INITDB,
    LEDGERS,
    ROOT,
    SECRETS_DIR,
    VAR_REF,
    command_lines,
    coordinator_services,
    database_of,
    databases_created,
    environment,
    generate_secrets,
    load_compose,
    make_secrets,
    migrate_commands,
    mounted,
    mounts,
    participant_module,
    secret_path,
    service_dsn,
    services,
    with_secret,
)
from txn_devstack.stack import SHOP

SECRET_LOOKING = re.compile(r"SECRET|TOKEN|PASSWORD", re.I)
# scheme://user:password@ (an empty password counts too)
DSN_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:[^/@\s]*@")
# What a secret-looking shell assignment may be: the content of a mounted file.
FROM_FILE = re.compile(rf"\$\(cat {SECRETS_DIR}/([A-Za-z0-9_.-]+)\)")
PARTICIPANT_MOUNTS = {"txnp_dsn", "txnp_secret", "txnp_api_tokens"}
COORDINATOR_MOUNTS = {"txn_log_dsn", "txn_participant_secrets", "txn_api_tokens"}
SUPERUSERS = {"postgres", "root", "0"}
ROLE_ATTRIBUTES_REFUSED = ("SUPERUSER", "CREATEDB", "CREATEROLE", "REPLICATION", "BYPASSRLS")


# -- the checks ----------------------------------------------------------------------------


def participant_services(data: dict[str, Any]) -> list[str]:
    return [n for n, svc in services(data).items() if participant_module(svc) is not None]


def environment_problems(data: dict[str, Any], text: str) -> list[str]:
    """Secrets where they must not be: a secret-looking variable substituted by compose or set
    in an environment (only a ``*_FILE`` path into /run/secrets is), a DSN with a password in
    an environment or a command line (``ps`` shows those), a shell assignment of a secret that
    is not read from a mounted file."""
    problems = [
        f"compose.yaml substitutes ${{{m.group(1)}}}: a secret must be a file of ./secrets/"
        for m in VAR_REF.finditer(text)
        if SECRET_LOOKING.search(m.group(1))
    ]
    for name, svc in services(data).items():
        for key, value in environment(svc).items():
            if SECRET_LOOKING.search(key) and not (
                key.endswith("_FILE") and value.startswith(f"{SECRETS_DIR}/")
            ):
                problems.append(f"service {name}: {key} in its environment looks like a secret")
            if DSN_WITH_PASSWORD.search(value):
                problems.append(f"service {name}: {key} in its environment holds a password")
        for line in command_lines(svc.get("command") or []):
            for word in line:
                if DSN_WITH_PASSWORD.search(word):
                    problems.append(f"service {name}: a password on its command line: {word}")
                key, _, value = word.partition("=")
                if SECRET_LOOKING.search(key) and not FROM_FILE.fullmatch(value):
                    problems.append(f"service {name}: {key} is not read from a mounted file")
    return problems


def secret_source_problems(data: dict[str, Any]) -> list[str]:
    """Each compose secret is a file of ./secrets/; each participant service mounts its own
    secret (as txnp_secret), DSN and the tokens, and nobody else mounts its secret or its DSN;
    the coordinators mount the log's DSN, every participant's secret and their tokens."""
    problems = []
    declared = data.get("secrets") or {}
    for source in declared:
        if secret_path(data, source, Path("secrets")) is None:
            problems.append(f"secret {source} is not a plain file of ./secrets/")
    users: dict[str, set[str]] = {}
    for name, svc in services(data).items():
        for source in mounts(svc).values():
            users.setdefault(source, set()).add(name)
            if source not in declared:
                problems.append(f"service {name} mounts {source}, which is not declared")
    coordinators = coordinator_services(services(data))
    if not coordinators:
        problems.append("no coordinator service")
    for name in coordinators:
        coordinator = mounts(services(data)[name])
        if not set(coordinator) >= COORDINATOR_MOUNTS:
            problems.append(f"{name} lacks {sorted(COORDINATOR_MOUNTS - set(coordinator))}")
    for name in participant_services(data):
        own = mounts(services(data)[name])
        needed = PARTICIPANT_MOUNTS | ({"txnp_coordinator_token"} if name == "orders" else set())
        if set(own) != needed:
            problems.append(f"service {name} mounts {sorted(own)}, it needs {sorted(needed)}")
        for target in ("txnp_secret", "txnp_dsn"):
            if target in own and users[own[target]] != {name}:
                others = sorted(users[own[target]] - {name})
                problems.append(f"service {name}: its {target} is also mounted by {others}")
    return problems


def sql_items(text: str) -> list[str]:
    """initdb.sql's SQL statements and psql meta-commands in order, one per item, without
    comments or function bodies."""
    items: list[str] = []
    buffer = ""
    for raw in re.sub(r"\$\$.*?\$\$", "$$", text, flags=re.S).splitlines():
        line = re.sub(r"--.*", "", raw).strip()
        if line.startswith("\\"):
            items.append(line)
            continue
        buffer += f" {line}"
        while ";" in buffer:
            statement, _, buffer = buffer.partition(";")
            items.append(statement.strip())
    return [i for i in [*items, buffer.strip()] if i]


def ownership(text: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """deploy/initdb.sql read statically: (database -> owner role, role -> the file in
    /run/secrets its password is read from, problems)."""
    problems = []
    owners: dict[str, str] = {}
    roles: dict[str, str] = {}
    read_from: dict[str, str] = {}  # psql variable -> file it was set from
    for item in sql_items(text):
        if m := re.fullmatch(r"\\set\s+(\w+)\s+`cat\s+" + SECRETS_DIR + r"/([\w.-]+)`", item):
            read_from[m.group(1)] = m.group(2)
        elif m := re.match(r"CREATE\s+(?:ROLE|USER)\s+(\w+)(.*)", item, re.I | re.S):
            role, options = m.group(1), m.group(2).upper()
            refused = [a for a in ROLE_ATTRIBUTES_REFUSED if re.search(rf"\b{a}\b", options)]
            if refused:
                problems.append(f"role {role} is {', '.join(refused)}")
            password = re.search(r"PASSWORD\s+:'(\w+)'", m.group(2))
            if "LOGIN" not in options.split() or password is None:
                problems.append(f"role {role}: LOGIN PASSWORD :'variable' (from a file) needed")
            elif password.group(1) not in read_from:
                problems.append(f"role {role}: its password is not read from /run/secrets")
            else:
                roles[role] = read_from[password.group(1)]
        elif m := re.match(r"CREATE\s+DATABASE\s+(\w+)(.*)", item, re.I | re.S):
            owned = re.search(r"\bOWNER\s*=?\s*(\w+)", m.group(2), re.I)
            if owned is None:
                problems.append(f"database {m.group(1)} has no OWNER: the superuser would own it")
            else:
                owners[m.group(1)] = owned.group(1)
        elif re.match(r"(GRANT|ALTER\s+\w+\s+\w+\s+OWNER|ALTER\s+(ROLE|USER))\b", item, re.I):
            problems.append(f"initdb.sql: {item.split()[0]} ... (roles get nothing but their own)")
    for db, owner in owners.items():
        if owner not in roles:
            problems.append(f"database {db} is owned by {owner}, not a login role made here")
        if owner in SUPERUSERS:
            problems.append(f"database {db} is owned by the superuser")
        if [d for d, o in owners.items() if o == owner] != [db]:
            problems.append(f"role {owner} owns more than database {db}")
        if not re.search(rf"REVOKE\s+ALL\s+ON\s+DATABASE\s+{db}\s+FROM\s+PUBLIC", text, re.I):
            problems.append(f"database {db}: CONNECT not revoked from PUBLIC")
    for role in set(roles) - set(owners.values()):
        problems.append(f"role {role} owns no database")
    if any(re.search(r"PASSWORD\s+'", item, re.I) for item in sql_items(text)):
        problems.append("initdb.sql holds a password")
    return owners, roles, problems


def connection_problems(
    data: dict[str, Any], folder: Path, owners: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """Each service connects as the owner of its database, the migration job as the owner of
    each database it migrates (its password from that role's file); nobody as the superuser."""
    problems = []
    password_files = ownership(INITDB.read_text())[1]
    for name, svc in services(data).items():
        if str(svc.get("user", "")).split(":")[0] in SUPERUSERS:
            problems.append(f"service {name} runs as {svc['user']}")
        if environment(svc).get("PGUSER") in SUPERUSERS:
            problems.append(f"service {name}: PGUSER is the superuser")
        found = service_dsn(data, name, folder)
        if found is not None:
            var, dsn = found
            user, db = urlsplit(dsn).username, database_of(dsn)
            if user != owners.get(db):
                problems.append(f"service {name}: {var} user {user}, {db} is {owners.get(db)}'s")
    for assigned, ns in migrate_commands(services(data), monkeypatch):
        user, db = urlsplit(ns.dsn).username, database_of(ns.dsn)
        if user != owners.get(db):
            problems.append(f"migrate: {db} migrated as {user}, not its owner {owners.get(db)}")
        source = FROM_FILE.fullmatch(assigned.get("PGPASSWORD", ""))
        if source is None or source.group(1) != password_files.get(str(user)):
            problems.append(f"migrate: {db}: PGPASSWORD is not {user}'s password file")
        elif source.group(1) not in mounts(services(data)["migrate"]):
            problems.append(f"migrate: {source.group(1)} is not mounted")
    return problems


# -- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """./secrets/ as deploy/make_secrets.py writes it, and the admin token it prints."""
    folder = tmp_path_factory.mktemp("compose") / "secrets"
    return folder, generate_secrets(folder)


@pytest.fixture(scope="module")
def folder(generated: tuple[Path, str]) -> Path:
    return generated[0]


def test_no_secret_in_compose_yaml_environments_or_command_lines(compose: dict[str, Any]) -> None:
    problems = environment_problems(compose, COMPOSE.read_text())
    assert not problems, "\n".join(problems)


def test_every_participant_has_its_own_secret(compose: dict[str, Any], folder: Path) -> None:
    """Distinct compose secrets, distinct files, distinct values; the coordinators have them
    all (what they hold for each is checked against the participant's own settings in
    test_compose.py)."""
    problems = secret_source_problems(compose)
    assert not problems, "\n".join(problems)
    names = participant_services(compose)
    assert sorted(names) == sorted({*LEDGERS, *SHOP})
    sources = {mounts(services(compose)[n])["txnp_secret"] for n in names}
    files = {secret_path(compose, s, folder) for s in sources}
    values = {mounted(compose, n, folder)["txnp_secret"] for n in names}
    assert len(sources) == len(files) == len(values) == len(names) == 7
    own = {n: mounted(compose, n, folder)["txnp_secret"].strip() for n in names}
    assert coordinator_services(services(compose)) == list(COORDINATORS)
    for coordinator in COORDINATORS:
        held = json.loads(mounted(compose, coordinator, folder)["txn_participant_secrets"])
        assert {name: held[name] for name in names} == own, coordinator


def test_the_coordinators_read_participant_secrets_and_api_tokens(
    compose: dict[str, Any],
) -> None:
    for name in COORDINATORS:
        assert set(mounts(services(compose)[name])) >= COORDINATOR_MOUNTS, name
    assert "txnp_coordinator_token" in mounts(services(compose)["orders"])


def test_each_database_is_owned_by_a_role_that_owns_nothing_else() -> None:
    owners, roles, problems = ownership(INITDB.read_text())
    assert not problems, "\n".join(problems)
    assert set(owners) == databases_created() >= {"txn_log", *LEDGERS, *SHOP}
    assert len(set(owners.values())) == len(owners)
    assert set(roles) == set(owners.values())


def test_nobody_connects_as_the_superuser(
    compose: dict[str, Any], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owners, roles, _ = ownership(INITDB.read_text())
    problems = connection_problems(compose, folder, owners, monkeypatch)
    assert not problems, "\n".join(problems)
    # The postgres image (initdb.sql) reads each owner's password from a file it mounts, the
    # same file as the migration job, holding the password of the DSN the service uses.
    postgres = mounted(compose, "postgres", folder)
    assert set(roles.values()) <= set(postgres)
    for name in (*COORDINATORS, *participant_services(compose)):
        found = service_dsn(compose, name, folder)
        assert found is not None, name
        parts = urlsplit(found[1])
        assert parts.password == postgres[roles[str(parts.username)]].strip(), name


def test_make_secrets_writes_what_compose_mounts(
    compose: dict[str, Any], generated: tuple[Path, str], tmp_path: Path
) -> None:
    folder, admin = generated
    declared = {s: secret_path(compose, s, folder) for s in compose["secrets"]}
    written = {p.name for p in folder.iterdir()}
    assert {p.name for p in declared.values() if p is not None} == written
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((folder / n).stat().st_mode) == 0o644 for n in written)
    # The admin token it printed is accepted everywhere, with every scope.
    for tokens in ("txn_api_tokens", "txnp_api_tokens"):
        parsed = parse_tokens(json.loads((folder / tokens).read_text()))
        assert parsed[token_hash(admin)].allows("admin"), tokens
    # Fresh values every time; never overwritten.
    again = tmp_path / "secrets"
    assert generate_secrets(again) != admin
    assert (again / "orders_secret").read_text() != (folder / "orders_secret").read_text()
    with pytest.raises(FileExistsError):
        generate_secrets(again)
    assert make_secrets().main(["make_secrets.py", str(again)]) == 1
    # Never committed, never in the image's build context.
    assert "secrets/" in (ROOT / ".gitignore").read_text().split()
    assert "secrets/" in (ROOT / ".dockerignore").read_text().split()


# -- the checks themselves catch breakage --------------------------------------------------


def _with_env(data: dict[str, Any], name: str, **env: str) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    changed["services"][name].setdefault("environment", {}).update(env)
    return changed


def test_secret_checks_catch_a_leaky_compose(
    compose: dict[str, Any], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = COMPOSE.read_text()
    assert environment_problems(compose, text + "\n# ${TXN_API_TOKENS:?set it}\n")
    assert environment_problems(_with_env(compose, "ledger1", TXNP_SECRET="/run/secrets/x"), text)
    assert environment_problems(_with_env(compose, "orders", TXNP_COORDINATOR_TOKEN="t"), text)
    assert environment_problems(_with_env(compose, "postgres", POSTGRES_PASSWORD="pw"), text)
    assert environment_problems(_with_env(compose, "orders", TXNP_DSN="postgresql://u:p@h/d"), text)
    assert not environment_problems(
        _with_env(compose, "postgres", A_PASSWORD_FILE="/run/secrets/a"), text
    )
    leaky = copy.deepcopy(compose)
    leaky["services"]["migrate"]["command"][2] += " && txn migrate --dsn postgresql://o:pw@h/d"
    assert environment_problems(leaky, text)
    leaky["services"]["migrate"]["command"][2] = "PGPASSWORD=pw txn migrate --dsn x"
    assert environment_problems(leaky, text)

    assert secret_source_problems(with_secret(compose, "ledger2", "txnp_secret", "ledger1_secret"))
    assert secret_source_problems(with_secret(compose, "payments", "txnp_dsn", "inventory_dsn"))
    assert secret_source_problems(
        with_secret(compose, "coordinator1", "orders_secret", "orders_secret")
    )
    assert secret_source_problems(with_secret(compose, "orders", "txnp_secret", "nope"))
    from_env = copy.deepcopy(compose)
    from_env["secrets"]["shipping_secret"] = {"environment": "SHIPPING_SECRET"}
    assert secret_source_problems(from_env)
    outside = copy.deepcopy(compose)
    outside["secrets"]["shipping_secret"] = {"file": "./deploy/shipping_secret"}
    assert secret_source_problems(outside)
    no_tokens = copy.deepcopy(compose)
    no_tokens["services"]["coordinator2"]["secrets"].remove("txn_api_tokens")
    assert "txn_api_tokens" in no_tokens["services"]["coordinator1"]["secrets"]  # not shared
    assert secret_source_problems(no_tokens)

    owners, _, _ = ownership(INITDB.read_text())
    as_superuser = _with_env(compose, "orders", TXNP_DSN="postgresql://postgres@postgres/orders")
    assert connection_problems(as_superuser, folder, owners, monkeypatch)
    someone_else = _with_env(compose, "coordinator2", TXN_LOG_DSN="postgresql://orders_owner@p/x")
    assert connection_problems(someone_else, folder, owners, monkeypatch)
    as_root = copy.deepcopy(compose)
    as_root["services"]["ledger3"]["user"] = "postgres"
    assert connection_problems(as_root, folder, owners, monkeypatch)
    migrate_as_superuser = copy.deepcopy(compose)
    script = migrate_as_superuser["services"]["migrate"]["command"][2]
    migrate_as_superuser["services"]["migrate"]["command"][2] = script.replace(
        "ledger2_owner@", "postgres@"
    )
    assert connection_problems(migrate_as_superuser, folder, owners, monkeypatch)
    wrong_password = copy.deepcopy(compose)
    wrong_password["services"]["migrate"]["command"][2] = script.replace(
        "/run/secrets/orders_db_password", "/run/secrets/payments_db_password"
    )
    assert connection_problems(wrong_password, folder, owners, monkeypatch)


def test_ownership_check_catches_a_permissive_initdb() -> None:
    text = INITDB.read_text()
    assert not ownership(text)[2]
    two = text.replace(
        "CREATE DATABASE ledger2 OWNER ledger2_owner", "CREATE DATABASE ledger2 OWNER ledger1_owner"
    )
    assert ownership(two)[2]
    assert ownership(text.replace("ledger3_owner LOGIN", "ledger3_owner SUPERUSER LOGIN"))[2]
    assert ownership(text.replace("ledger3_owner LOGIN", "ledger3_owner CREATEDB LOGIN"))[2]
    assert ownership(text.replace("OWNER orders_owner", ""))[2]
    assert ownership(text + "\nGRANT ALL ON DATABASE orders TO payments_owner;\n")[2]
    assert ownership(text + "\nALTER DATABASE ledger1 OWNER TO postgres;\n")[2]
    assert ownership(text.replace("PASSWORD :'password'", "PASSWORD 'hunter2'", 1))[2]
    assert ownership(text.replace("REVOKE ALL ON DATABASE payments FROM PUBLIC;", ""))[2]
    assert ownership(text + "\nCREATE ROLE spare LOGIN PASSWORD :'password';\n")[2]
