"""Static checks of the Kubernetes manifests in deploy/k8s/ (docs/kubernetes.md), the equivalent
of compose.yaml: every built-in resource validates against the Kubernetes API's JSON schemas
(kubernetes-validate, strict: an unknown field is an error; no network needed); the
CloudNativePG clusters, a CRD it does not know, are checked field by field. compose.yaml stays
the one source of truth for what the services run (its two coordinator services, coordinator1
and coordinator2, are the one Deployment coordinator here): the same commands, the same
environment value for value (but the two variables Kubernetes sets its own way), the same
secrets files at the same /run/secrets paths, the same migrations. The selectors and network
policies are checked in test_k8s_network.py, the Secrets in test_k8s_secrets.py; the helpers
are in k8s_support.py."""

from __future__ import annotations

import copy
import functools
import json
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from coordinator import access
from coordinator.settings import Settings
from participants.sdk.guard import OPEN
from participants.sdk.settings import ParticipantSettings
from tests.unit.compose_support import (
    COORDINATOR_ALIAS,
    COORDINATORS,
    LEDGERS,
    SECRETS_DIR,
    database_of,
    load_compose,
    migrate_commands,
    migrated_databases,
    participant_module,
    registry_problems,
    service_settings,
    services,
)
from tests.unit.k8s_support import (
    CNPG,
    CREATE_SECRETS,
    EXAMPLE_SECRETS,
    K8S,
    KUBERNETES_VERSION,
    KUSTOMIZATION,
    POD_NAME,
    ROLE_ATTRIBUTES_REFUSED,
    SECRET,
    Created,
    as_compose,
    cluster_of,
    cluster_problems,
    container,
    create_secrets,
    env_problems,
    k8s_env,
    k8s_mounts,
    kustomization,
    load_docs,
    manifests,
    mount_problems,
    network_problems,
    of_kind,
    owners,
    pod_secrets_in,
    pod_spec,
    secret_value_problems,
    selector_problems,
    workload_name,
    workloads,
)
from txn_devstack.stack import SHOP

# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return manifests()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


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


def test_builtin_resources_validate_against_the_kubernetes_schemas(
    docs: list[dict[str, Any]], example: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strict: a misspelt or misplaced field is an error, not ignored. The schemas ship with
    kubernetes-validate: no connection may be opened meanwhile."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("kubernetes-validate tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(AssertionError, match="network"):
        socket.create_connection(("127.0.0.1", 9))
    # Each call reads its schema files again (1.4 MB of definitions): once is enough here.
    utils = kubernetes_validate.utils
    monkeypatch.setattr(utils, "schema_contents", functools.cache(utils.schema_contents))
    kinds = set()
    for doc in [*docs, *example]:
        if doc["apiVersion"] == CNPG:
            assert doc["kind"] in ("Cluster", "Database"), doc["kind"]
            continue
        try:
            used = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(map(str, e.path))
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {where}: {e.message}")
        assert used == KUBERNETES_VERSION, f"validated against {used}"
        kinds.add(doc["kind"])
    assert kinds == {
        "Namespace",
        "Deployment",
        "Service",
        "Job",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "Secret",
    }


def test_the_validator_rejects_mistakes(docs: list[dict[str, Any]]) -> None:
    """What the schema test relies on: strict validation refuses an unknown field and a wrong
    type, and knows no CloudNativePG kind (those are checked in test_postgres_clusters)."""
    deployment = copy.deepcopy(of_kind(docs, "Deployment")["coordinator"])
    version = KUBERNETES_VERSION
    kubernetes_validate.validate(deployment, version, strict=True)
    probe = container(deployment)["readinessProbe"]["httpGet"]
    probe["paht"] = probe.pop("path")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)
    deployment = copy.deepcopy(of_kind(docs, "Deployment")["coordinator"])
    deployment["spec"]["replicas"] = "2"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(of_kind(docs, "Cluster")["txn-log"], version, strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secrets(
    docs: list[dict[str, Any]],
) -> None:
    data = kustomization()
    files = sorted(p.name for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)
    assert sorted(data["resources"]) == sorted(set(files) - {EXAMPLE_SECRETS.name})
    # Applying placeholders would replace the real Secrets.
    assert not of_kind(docs, "Secret")
    assert list(of_kind(docs, "Namespace")) == [data["namespace"]]
    assert re.search(rf"namespace=\$\{{2:-{data['namespace']}\}}", CREATE_SECRETS.read_text())
    for doc in docs:
        assert "namespace" not in doc["metadata"], "kustomization.yaml sets the namespace"


def test_same_services_as_compose(compose: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """Every compose service but the Postgres server (the CloudNativePG clusters here) is a
    workload of the same name (coordinator1 and coordinator2: the Deployment coordinator), with
    the same image and command (the migration job's: test_migrate_job_runs_composes_migrations)."""
    svcs = services(compose)
    k8s = workloads(docs)
    stands_for = {name: workload_name(svcs, name) for name in svcs if name != "postgres"}
    assert set(k8s) == set(stands_for.values()) == {"coordinator", "migrate", *LEDGERS, *SHOP}
    assert [n for n, w in stands_for.items() if w == COORDINATOR_ALIAS] == list(COORDINATORS)
    assert of_kind(docs, "Job").keys() == {"migrate"}
    for name, workload_key in stands_for.items():
        ctr = container(k8s[workload_key])
        assert ctr["image"] == svcs[name]["image"], name
        if name != "migrate":
            assert ctr["command"] == svcs[name]["command"], name
    for name, workload in k8s.items():
        ctr = container(workload)
        if name != "migrate":
            assert ctr.get("imagePullPolicy") == "IfNotPresent", name  # a local image
        assert pod_spec(workload).get("automountServiceAccountToken") is False, name
        security = pod_spec(workload)["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001, name
        assert ctr["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_environment_is_composes(compose: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """One source of truth: the same variables, the same values, but TXN_INSTANCE_ID (the
    pod's name; compose's coordinator1 and coordinator2 each set their own) and
    TXN_OPEN_METRICS (the readiness probe) on the coordinators."""
    assert env_problems(compose, docs) == []
    for workload in workloads(docs).values():
        for entry in container(workload).get("env") or []:
            assert "secretKeyRef" not in json.dumps(entry), "a secret in an environment variable"


def test_secret_files_are_mounted_as_compose_mounts_them(
    compose: dict[str, Any], docs: list[dict[str, Any]]
) -> None:
    assert mount_problems(compose, docs) == []
    for name, workload in workloads(docs).items():
        assert k8s_mounts(workload), name
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        for mount in container(workload)["volumeMounts"]:
            if mount["mountPath"] == SECRETS_DIR:
                mode = volumes[mount["name"]]["secret"]["defaultMode"]
                assert mode & 0o007 == 0, f"{name}: secrets readable by others ({mode:o})"
                assert pod_spec(workload)["securityContext"]["fsGroup"] == 10001, name


def test_migrate_job_runs_composes_migrations(
    compose: dict[str, Any], docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same `txn migrate` lines (parsed with the real parser), each database as its
    owner with the password from its file; the host is the read-write service of the
    CloudNativePG cluster holding the database instead of compose's server."""
    job = of_kind(docs, "Job")["migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    theirs = migrate_commands(services(compose), monkeypatch)
    ours = migrate_commands({"migrate": {"command": container(job)["command"]}}, monkeypatch)
    assert len(ours) == len(theirs) == 8
    clusters = cluster_of(docs)
    for (assigned, ns), (compose_assigned, compose_ns) in zip(ours, theirs, strict=True):
        assert assigned == compose_assigned
        assert ns.target == compose_ns.target
        ours_dsn, theirs_dsn = urlsplit(ns.dsn), urlsplit(compose_ns.dsn)
        assert (ours_dsn.username, ours_dsn.path) == (theirs_dsn.username, theirs_dsn.path)
        assert ours_dsn.password is None, "a password on the command line"
        db = database_of(ns.dsn)
        assert (ours_dsn.hostname, ours_dsn.port) == (f"{clusters[db]}-rw", 5432), ns.dsn
        assert assigned == {"PGPASSWORD": f"$(cat {SECRETS_DIR}/{db}_db_password)"}


def test_postgres_clusters(
    docs: list[dict[str, Any]], compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log on a CloudNativePG cluster of its own (txn_log owned by txn_log_owner), the
    participant services' databases on another; every database compose migrates is made, owned
    by its own role; pg_hba admits each owner to its database only; max_connections holds what
    the services may open (the coordinators at the autoscaler's most)."""
    clusters = of_kind([d for d in docs if d["apiVersion"] == CNPG], "Cluster")
    assert clusters.keys() == {"txn-log", "participants-db"}
    for cluster in clusters.values():
        assert cluster_problems(cluster) == []
    log = clusters["txn-log"]["spec"]["bootstrap"]["initdb"]
    assert (log["database"], log["owner"]) == ("txn_log", "txn_log_owner")
    where, owned = cluster_of(docs), owners(docs)
    migrated = migrated_databases(services(compose), monkeypatch)
    assert set(where) == set(migrated) == {"txn_log", *LEDGERS, *SHOP}
    for db, name in where.items():
        assert name == ("txn-log" if db == "txn_log" else "participants-db"), db
        assert owned[db] == f"{db}_owner", db
        hba = clusters[name]["spec"]["postgresql"]["pg_hba"]
        assert f"host {db} {db}_owner all scram-sha-256" in hba, (name, db)
    for cluster in clusters.values():
        admitted = [line.split() for line in cluster["spec"]["postgresql"]["pg_hba"][:-1]]
        hosted = {db for db, c in where.items() if c == cluster["metadata"]["name"]}
        assert {(line[1], line[2]) for line in admitted} == {(db, owned[db]) for db in hosted}
    # Roles: the bootstrap's owner, or a managed login role with nothing more.
    roles = clusters["participants-db"]["spec"]["managed"]["roles"]
    bootstrapped = {c["spec"]["bootstrap"]["initdb"]["owner"] for c in clusters.values()}
    assert {r["name"] for r in roles} | bootstrapped == {owned[db] for db in where}
    for role in roles:
        assert role["login"] is True and role.get("ensure", "present") == "present"
        assert not any(role.get(a) for a in ROLE_ATTRIBUTES_REFUSED), role
    # Connections: the coordinators at the autoscaler's most, each as coordinator.pglog opens
    # them (as docs/configuration.md counts); each participant service's pool and overflow.
    k8s = workloads(docs)
    pool = int(k8s_env(k8s["coordinator"]).get("TXN_POOL_SIZE", Settings().pool_size))
    per_coordinator = 2 * pool + 2 * max(2, pool // 8)
    most = of_kind(docs, "HorizontalPodAutoscaler")["coordinator"]["spec"]["maxReplicas"]
    default = ParticipantSettings.model_fields["pool_size"].default
    participants = sum(
        2 * int(k8s_env(w).get("TXNP_POOL_SIZE", default))
        for name, w in k8s.items()
        if name not in ("coordinator", "migrate")
    )
    for name, need in (("txn-log", most * per_coordinator), ("participants-db", participants)):
        parameters = clusters[name]["spec"]["postgresql"]["parameters"]
        assert need <= int(parameters["max_connections"]) - 3, (name, need)


def test_coordinator_deployment_probes_and_identity(
    docs: list[dict[str, Any]],
    pod_secrets: tuple[dict[str, Any], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two replicas; ready when /readyz answers (the log is reachable), alive while /healthz
    does, both on the port it listens on and answered without a token (its real route policy,
    with its settings as the pod builds them); its instance id is its pod's name."""
    deployment = of_kind(docs, "Deployment")["coordinator"]
    assert deployment["spec"]["replicas"] == 2
    ctr = container(deployment)
    assert ctr["command"] == ["txn", "serve"]
    env = k8s_env(deployment)
    assert env["TXN_INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert list(ports.values()) == [int(env["TXN_PORT"])] == [8000]
    data, folder = pod_secrets
    settings = service_settings(data, "coordinator", folder, monkeypatch)
    assert settings.instance_id == POD_NAME
    assert settings.port == 8000 and settings.host == "0.0.0.0"
    rule = access.policy(settings)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = ctr[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == settings.port, probe
        assert "httpHeaders" not in get, f"{probe}: no token in a manifest"
        assert rule("GET", path) == OPEN, f"{probe}: {path} would answer 401 to the kubelet"
    assert ctr["resources"]["requests"]["cpu"], "the autoscaler's utilisation needs a request"


def test_participant_probes_ports_and_services(
    compose: dict[str, Any], docs: list[dict[str, Any]]
) -> None:
    """Each participant service: its Service has its compose name and port, so that the
    coordinators' registry (TXN_PARTICIPANTS) reaches it; /healthz for readiness and liveness;
    the participants reach the coordinators by the Service coordinator on its port."""
    k8s = workloads(docs)
    svcs = of_kind(docs, "Service")
    assert set(svcs) == set(k8s) - {"migrate"}
    data = as_compose(docs, [])
    assert registry_problems(services(data)) == []
    registry = json.loads(k8s_env(k8s["coordinator"])["TXN_PARTICIPANTS"])
    for name, workload in k8s.items():
        if name in ("coordinator", "migrate"):
            continue
        assert participant_module(services(data)[name]) == participant_module(
            services(compose)[name]
        )
        port = int(k8s_env(workload)["TXNP_PORT"])
        ctr = container(workload)
        named = {p["name"]: p["containerPort"] for p in ctr["ports"]}
        assert list(named.values()) == [port], name
        for probe in ("readinessProbe", "livenessProbe"):
            get = ctr[probe]["httpGet"]
            assert get["path"] == "/healthz", (name, probe)
            assert named.get(get["port"], get["port"]) == port, (name, probe)
        assert [p["port"] for p in svcs[name]["spec"]["ports"]] == [port], name
        assert registry[name] == f"http://{name}:{port}"
        url = urlsplit(k8s_env(workload)["TXNP_COORDINATORS"])
        assert url.hostname == COORDINATOR_ALIAS, name  # compose's alias of its coordinators
        coordinator_port = svcs[url.hostname]["spec"]["ports"][0]["port"] if url.hostname else 0
        assert url.port == coordinator_port == 8000, name


def test_checks_catch_mistakes(compose: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """Each check above reports what a plausible mistake would break."""

    def broken(change: Callable[[list[dict[str, Any]]], Any]) -> list[dict[str, Any]]:
        changed = copy.deepcopy(docs)
        change(changed)
        return changed

    def find(d: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
        return of_kind(d, kind)[name]

    def set_env(name: str, var: str, value: Any) -> Callable[[list[dict[str, Any]]], None]:
        def change(d: list[dict[str, Any]]) -> None:
            env = container(workloads(d)[name]).setdefault("env", [])
            env[:] = [e for e in env if e["name"] != var]
            if value is not None:
                key = "valueFrom" if isinstance(value, dict) else "value"
                env.append({"name": var, key: value})

        return change

    assert env_problems(compose, broken(set_env("ledger2", "TXNP_POOL_SIZE", "11")))
    assert env_problems(compose, broken(set_env("orders", "TXNP_COORDINATORS", None)))
    assert env_problems(compose, broken(set_env("payments", "TXNP_INSECURE_NO_AUTH", "true")))
    assert env_problems(compose, broken(set_env("coordinator", "TXN_INSTANCE_ID", "c-1")))
    assert env_problems(compose, broken(set_env("coordinator", "TXN_OPEN_METRICS", None)))
    secret_ref = {"secretKeyRef": {"name": SECRET, "key": "shipping_secret"}}
    assert env_problems(compose, broken(set_env("shipping", "TXNP_SECRET", secret_ref)))
    # Each compose coordinator service is compared with the Deployment, but its instance id.
    changed = copy.deepcopy(compose)
    changed["services"]["coordinator2"]["environment"]["TXN_INSTANCE_ID"] = "elsewhere"
    assert env_problems(changed, docs) == []
    changed["services"]["coordinator2"]["environment"]["TXN_LEASE_S"] = "5"
    assert env_problems(changed, docs) == ["coordinator2: TXN_LEASE_S is not set (compose: '5')"]
    changed["services"]["coordinator1"]["secrets"].remove("txn_api_tokens")
    assert mount_problems(changed, docs) == [
        "coordinator1: /run/secrets/txn_api_tokens is 'txn_api_tokens' (compose: None)"
    ]

    def remount(name: str, key: str, path: str) -> Callable[[list[dict[str, Any]]], None]:
        def change(d: list[dict[str, Any]]) -> None:
            volume = pod_spec(workloads(d)[name])["volumes"][0]["secret"]
            volume["items"] = [i for i in volume["items"] if i["path"] != path]
            volume["items"].append({"key": key, "path": path})

        return change

    assert mount_problems(compose, broken(remount("orders", "payments_secret", "txnp_secret")))
    assert mount_problems(compose, broken(remount("ledger1", "ledger1_dsn", "txn_log_dsn")))

    def drop_policy(name: str) -> Callable[[list[dict[str, Any]]], None]:
        return lambda d: d.remove(find(d, "NetworkPolicy", name))

    assert network_problems(broken(drop_policy("default-deny-ingress")))  # strangers get in
    assert network_problems(broken(drop_policy("participants-from-coordinators")))
    assert network_problems(broken(drop_policy("orders-public")))
    assert network_problems(broken(drop_policy("txn-log-db")))  # then open to everyone

    def orders_all_ports(d: list[dict[str, Any]]) -> None:
        find(d, "NetworkPolicy", "orders-public")["spec"]["ingress"][0].pop("ports")

    assert network_problems(broken(orders_all_ports))

    def participants_from_anyone(d: list[dict[str, Any]]) -> None:
        find(d, "NetworkPolicy", "participants-from-coordinators")["spec"]["ingress"][0].pop("from")

    assert network_problems(broken(participants_from_anyone))

    def log_from_participants(d: list[dict[str, Any]]) -> None:
        rule = find(d, "NetworkPolicy", "txn-log-db")["spec"]["ingress"][0]
        rule["from"].append({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "orders"}}})

    assert network_problems(broken(log_from_participants))

    def typo_selector(d: list[dict[str, Any]]) -> None:
        find(d, "Service", "inventory")["spec"]["selector"]["app.kubernetes.io/name"] = "invntory"

    assert selector_problems(broken(typo_selector))

    def pdb_everything(d: list[dict[str, Any]]) -> None:
        find(d, "PodDisruptionBudget", "coordinator")["spec"]["selector"] = {
            "matchLabels": {"app.kubernetes.io/part-of": "txn"}
        }

    assert selector_problems(broken(pdb_everything))

    def wrong_target_port(d: list[dict[str, Any]]) -> None:
        find(d, "Service", "ledger3")["spec"]["ports"][0]["targetPort"] = 8102

    assert selector_problems(broken(wrong_target_port))

    log = find(docs, "Cluster", "txn-log")
    changes: list[Callable[[dict[str, Any]], Any]] = [
        lambda c: c["spec"].update(instances=2),
        lambda c: c["spec"]["postgresql"].pop("synchronous"),
        lambda c: c["spec"]["postgresql"]["synchronous"].update(number=3),
        lambda c: c["spec"].update(minSyncReplicas=1, maxSyncReplicas=1),
        lambda c: c["spec"]["postgresql"]["parameters"].update(max_prepared_transactions="0"),
        lambda c: c["spec"]["postgresql"]["parameters"].pop("max_prepared_transactions"),
        lambda c: c["spec"]["postgresql"]["pg_hba"].pop(),
        lambda c: c["spec"].update(enableSuperuserAccess=True),
    ]
    for change in changes:
        cluster = copy.deepcopy(log)
        change(cluster)
        assert cluster_problems(cluster), cluster["spec"]
    legacy = copy.deepcopy(log)
    legacy["spec"]["postgresql"].pop("synchronous")
    legacy["spec"].update(minSyncReplicas=1, maxSyncReplicas=1)
    assert cluster_problems(legacy) == []  # the older form is accepted too

    leaked = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "x"},
        "stringData": {"txn_log_dsn": "postgresql://txn_log_owner:0a1b2c3d@txn-log-rw/txn_log"},
    }
    assert secret_value_problems([leaked], "x")
    leaked["stringData"] = {"orders_secret": "REPLACE_ME", "extra": "hunter2"}
    assert secret_value_problems([leaked], "x")
    in_env = copy.deepcopy(of_kind(docs, "Deployment")["orders"])
    container(in_env)["env"].append({"name": "X", "value": "txn_" + "a" * 43})
    assert secret_value_problems([in_env], "x")
