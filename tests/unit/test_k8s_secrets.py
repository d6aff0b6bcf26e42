"""The Secrets of the Kubernetes manifests in deploy/k8s/ (docs/kubernetes.md): the example
holds placeholders only; create-secrets.sh makes the Secrets from what deploy/make_secrets.py
writes (run here with a stand-in for kubectl), and every service's settings are built from its
manifest's environment and those files, as in the pod; docs/kubernetes.md describes it all."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from coordinator import access
from participants.sdk.tokens import token_hash
from tests.unit.compose_support import (
    LEDGERS,
    ROOT,
    generate_secrets,
    make_secrets,
    migrated_databases,
    migration_problems,
    service_settings,
    services,
)
from tests.unit.k8s_support import (
    CNPG,
    CREATE_SECRETS,
    DOCS,
    EXAMPLE_SECRETS,
    K8S,
    KUSTOMIZATION,
    PLACEHOLDER,
    SECRET,
    Created,
    cluster_of,
    create_secrets,
    k8s_mounts,
    kubectl_calls,
    kustomization,
    load_docs,
    manifests,
    of_kind,
    pod_secrets_in,
    run_create_secrets,
    secret_value_problems,
    workloads,
)
from txn_devstack.stack import SHOP

# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return manifests()


@pytest.fixture(scope="module")
def example() -> list[dict[str, Any]]:
    return load_docs(EXAMPLE_SECRETS)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Created], str]:
    """deploy/make_secrets.py's folder, the Secrets create-secrets.sh creates from it, and the
    admin token make_secrets.py printed."""
    return create_secrets(tmp_path_factory.mktemp("k8s-secrets"))


@pytest.fixture
def pod_secrets(
    made: tuple[Path, dict[str, Created], str], docs: list[dict[str, Any]], tmp_path: Path
) -> tuple[dict[str, Any], Path]:
    """The manifests as compose_support reads compose.yaml, and a folder standing in for
    ./secrets/ holding the Secret txn-secrets as created."""
    return pod_secrets_in(made, docs, tmp_path)


# -- the tests -----------------------------------------------------------------------------


def test_secrets_hold_placeholders_only(
    docs: list[dict[str, Any]], example: list[dict[str, Any]]
) -> None:
    """secrets.example.yaml: REPLACE_ME for every value; its Secret txn-secrets has a key per
    file of deploy/make_secrets.py (but the superuser's password), every key a pod mounts; an
    owner Secret for each role the clusters create. No manifest holds a real-looking value."""
    for path in sorted(K8S.glob("*.yaml")):
        if path != KUSTOMIZATION:
            assert secret_value_problems(load_docs(path), path.name) == []
    secrets = of_kind(example, "Secret")
    files, _admin = make_secrets().secret_files()
    assert set(secrets[SECRET]["stringData"]) == set(files) - {"postgres_password"}
    for name, workload in workloads(docs).items():
        assert set(k8s_mounts(workload).values()) <= set(secrets[SECRET]["stringData"]), name
    referenced = {}
    for cluster in of_kind([d for d in docs if d["apiVersion"] == CNPG], "Cluster").values():
        initdb = cluster["spec"]["bootstrap"]["initdb"]
        referenced[initdb["secret"]["name"]] = initdb["owner"]
        for role in (cluster["spec"].get("managed") or {}).get("roles") or []:
            referenced[role["passwordSecret"]["name"]] = role["name"]
    assert set(secrets) == {SECRET, *referenced}
    for name, role in referenced.items():
        assert secrets[name]["type"] == "kubernetes.io/basic-auth", name
        assert secrets[name]["stringData"] == {"username": role, "password": PLACEHOLDER}


def test_create_secrets_makes_what_the_manifests_mount(
    made: tuple[Path, dict[str, Created], str],
    example: list[dict[str, Any]],
    docs: list[dict[str, Any]],
) -> None:
    """create-secrets.sh creates the example's Secrets, in the stack's namespace, from
    make_secrets.py's files: the DSNs' host rewritten to each database's read-write service
    (nothing else changed), each owner's password without the file's final newline."""
    folder, created, _admin = made
    secrets = of_kind(example, "Secret")
    assert created.keys() == secrets.keys()
    namespace = kustomization()["namespace"]
    where = cluster_of(docs)
    for name, secret in created.items():
        assert secret.namespace == namespace, name
        assert secret.type == secrets[name]["type"], name
        assert set(secret.data) == set(secrets[name]["stringData"]), name
    for key, content in created[SECRET].data.items():
        original = (folder / key).read_text()
        if not key.endswith("_dsn"):
            assert content == original, key
            continue
        db = key.removesuffix("_dsn")
        dsn = urlsplit(content.strip())
        assert (dsn.hostname, dsn.port, dsn.path) == (f"{where[db]}-rw", 5432, f"/{db}"), key
        assert content == original.replace("@postgres:5432/", f"@{where[db]}-rw:5432/"), key
        owner = created[f"{db.replace('_', '-')}-owner"].data
        assert (dsn.username, dsn.password) == (owner["username"], owner["password"]), key
        assert owner["password"] == (folder / f"{db}_db_password").read_text().strip(), key
        assert "\n" not in owner["password"]
    assert "postgres_password" not in created[SECRET].data


def test_services_start_with_the_created_secrets(
    made: tuple[Path, dict[str, Created], str],
    pod_secrets: tuple[dict[str, Any], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each service's settings, built from its manifest's environment and the files its pod
    finds in /run/secrets: the coordinators would start, connect to the log's read-write
    service, sign each participant's calls with that participant's own secret, and accept the
    admin token and orders' submissions; every database is migrated as the service using it
    needs."""
    _folder, _created, admin = made
    data, folder = pod_secrets
    coord = service_settings(data, "coordinator", folder, monkeypatch)
    assert access.startup_problems(coord) == []
    assert coord.production
    assert urlsplit(coord.log_dsn.get_secret_value()).hostname == "txn-log-rw"
    assert coord.tokens()[token_hash(admin)].allows("admin")
    for name in (*LEDGERS, *SHOP):
        settings = service_settings(data, name, folder, monkeypatch)
        assert settings.name == name
        assert settings.secrets() == coord.secrets_of(name)[:1], name
        assert urlsplit(settings.dsn.get_secret_value()).hostname == "participants-db-rw"
        assert settings.tokens(), name
    orders = service_settings(data, "orders", folder, monkeypatch)
    token = coord.tokens()[token_hash(orders.coordinator_token.get_secret_value())]
    assert token.allows("submit") and token.allows("read")
    svcs = services(data)
    assert migration_problems(data, migrated_databases(svcs, monkeypatch), folder) == []


def test_create_secrets_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    """A folder without make_secrets.py's files, or whose DSNs do not name compose's server,
    is refused before kubectl is called."""
    generate_secrets(tmp_path / "secrets")
    (tmp_path / "secrets" / "orders_dsn").unlink()
    result = run_create_secrets(tmp_path / "secrets", tmp_path / "a")
    assert result.returncode != 0 and "orders_dsn" in result.stderr
    assert not kubectl_calls(tmp_path / "a")
    generate_secrets(tmp_path / "other")
    dsn = tmp_path / "other" / "ledger2_dsn"
    dsn.write_text(dsn.read_text().replace("@postgres:5432/", "@db.example:5432/"))
    result = run_create_secrets(tmp_path / "other", tmp_path / "b")
    assert result.returncode != 0 and "ledger2_dsn" in result.stderr
    assert not kubectl_calls(tmp_path / "b")
    assert CREATE_SECRETS.stat().st_mode & stat.S_IXUSR, "create-secrets.sh is not executable"


def test_docs_describe_the_manifests() -> None:
    text = DOCS.read_text()
    for path in sorted(K8S.iterdir()):
        assert path.name in text, f"docs/kubernetes.md does not describe {path.name}"
    for needed in (
        "kubectl apply -k deploy/k8s",
        "deploy/make_secrets.py",
        "deploy/k8s/create-secrets.sh",
        "CloudNativePG",
        "txn-log-rw",
        "participants-db-rw",
        "TXN_INSTANCE_ID",
        "TXN_OPEN_METRICS",
        "REPLACE_ME",
    ):
        assert needed in text, needed
    for cited in re.findall(r"\b((?:deploy|docs|tests|participants|coordinator)/[\w./-]+)", text):
        assert (ROOT / cited.rstrip(".")).exists(), f"docs/kubernetes.md cites {cited}"
