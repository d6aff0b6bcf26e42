"""Static checks of the Kubernetes manifests in deploy/k8s/ (docs/kubernetes.md), the equivalent
of compose.yaml: every built-in resource validates against the Kubernetes API's JSON schemas
(kubernetes-validate, strict: an unknown field is an error; no network needed); the
CloudNativePG clusters, a CRD it does not know, are checked field by field. compose.yaml stays
the one source of truth for what the services run: the same commands, the same environment
value for value (but the two variables only Kubernetes needs), the same secrets files at the
same /run/secrets paths, the same migrations. The Secrets are made by create-secrets.sh from
what deploy/make_secrets.py writes (run here with a stand-in for kubectl), and every service's
settings are built from its manifest's environment and those files, as in the pod. The network
policies are evaluated for who may reach whom."""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import socket
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from coordinator import access
from coordinator.settings import Settings
from devstack.stack import SHOP
from participants.sdk.guard import OPEN
from participants.sdk.settings import ParticipantSettings
from participants.sdk.tokens import token_hash
from tests.unit.compose_support import (
    LEDGERS,
    ROOT,
    SECRETS_DIR,
    database_of,
    environment,
    generate_secrets,
    load_compose,
    make_secrets,
    migrate_commands,
    migrated_databases,
    migration_problems,
    mounts,
    participant_module,
    registry_problems,
    service_settings,
    services,
)

K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
EXAMPLE_SECRETS = K8S / "secrets.example.yaml"
CREATE_SECRETS = K8S / "create-secrets.sh"
DOCS = ROOT / "docs" / "kubernetes.md"

# The Kubernetes version whose API schemas every built-in resource must satisfy (shipped with
# kubernetes-validate 1.33 and newer).
KUBERNETES_VERSION = "1.33"
CNPG = "postgresql.cnpg.io/v1"
SECRET = "txn-secrets"  # the Secret holding deploy/make_secrets.py's files
PLACEHOLDER = "REPLACE_ME"
POD_NAME = "coordinator-7d4b9c6f5-x2k8q"  # stands in for the downward API's metadata.name
# What only Kubernetes gives a service (compose does not): variable -> value, or the valueFrom.
K8S_ONLY_ENV: dict[str, dict[str, Any]] = {
    "coordinator": {
        # Unique among live pods, the same across restarts of the pod's container.
        "TXN_INSTANCE_ID": {"fieldRef": {"fieldPath": "metadata.name"}},
        # The kubelet's readiness probe on /readyz sends no token (docs/kubernetes.md).
        "TXN_OPEN_METRICS": "true",
    }
}
# Where a pod runs from, for the network policy evaluation: (namespace or None, pod labels).
OUTSIDE: tuple[str | None, dict[str, str]] = (None, {})
OPERATOR = ("cnpg-system", {"app.kubernetes.io/name": "cloudnative-pg"})
MONITORING = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
OTHER_NAMESPACE = ("default", {"app": "client"})
# Shapes of real secret values: a DSN with a password, a token, a hex password or secret.
REAL_LOOKING = re.compile(
    r"[a-z][a-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@|txn_[A-Za-z0-9_-]{20,}|\b[0-9a-f]{32,}\b|"
    r"\b[A-Za-z0-9_-]{40,}\b"
)
ROLE_ATTRIBUTES_REFUSED = ("superuser", "createdb", "createrole", "replication", "bypassrls")


# -- loading -------------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the same YAML, faster
    docs = [d for d in yaml.load_all(path.read_text(), Loader=loader) if d is not None]
    for doc in docs:
        assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
        assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path.name}: {doc}"
        assert doc["metadata"].get("name"), f"{path.name}: a {doc['kind']} without a name"
    return docs


def kustomization() -> dict[str, Any]:
    data = yaml.safe_load(KUSTOMIZATION.read_text())
    assert isinstance(data, dict)
    return data


def manifests() -> list[dict[str, Any]]:
    """Every resource `kubectl apply -k deploy/k8s` creates."""
    return [doc for name in kustomization()["resources"] for doc in load_docs(K8S / name)]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for doc in docs:
        if doc["kind"] == kind:
            name = doc["metadata"]["name"]
            assert name not in found, f"two {kind}s named {name}"
            found[name] = doc
    return found


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployments and Jobs by name (their names are compose's service names)."""
    found = {**of_kind(docs, "Deployment")}
    for name, job in of_kind(docs, "Job").items():
        assert name not in found, f"a Deployment and a Job named {name}"
        found[name] = job
    return found


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"].get("labels") or {})


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    found: dict[str, Any] = containers[0]
    return found


def k8s_env(workload: dict[str, Any]) -> dict[str, Any]:
    """name -> its literal value, or its valueFrom (a mapping)."""
    found: dict[str, Any] = {}
    for entry in container(workload).get("env") or []:
        assert entry["name"] not in found, f"{entry['name']} is set twice"
        found[entry["name"]] = entry["valueFrom"] if "valueFrom" in entry else entry["value"]
    return found


def k8s_mounts(workload: dict[str, Any]) -> dict[str, str]:
    """What the pod finds in /run/secrets: file name -> key of the Secret txn-secrets."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes") or []}
    found: dict[str, str] = {}
    for mount in container(workload).get("volumeMounts") or []:
        if mount["mountPath"] != SECRETS_DIR:
            continue
        assert mount.get("readOnly") is True, "/run/secrets must be mounted read-only"
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == SECRET, secret
        # Only the files this service needs, each by name (not the whole Secret).
        assert secret.get("items"), f"{workload['metadata']['name']}: mount the items it needs"
        for item in secret["items"]:
            assert item["path"] not in found, f"two secrets mounted as {item['path']}"
            found[item["path"]] = item["key"]
    return found


def cluster_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    """database -> the CloudNativePG cluster holding it (its bootstrap's or a Database's)."""
    found: dict[str, str] = {}
    for doc in docs:
        if doc["apiVersion"] != CNPG:
            continue
        if doc["kind"] == "Cluster":
            initdb = doc["spec"]["bootstrap"]["initdb"]
            db, cluster = initdb["database"], doc["metadata"]["name"]
        elif doc["kind"] == "Database":
            if doc["spec"].get("ensure", "present") != "present":
                continue
            db, cluster = doc["spec"]["name"], doc["spec"]["cluster"]["name"]
        else:
            continue
        assert db not in found, f"database {db} is made twice"
        found[db] = cluster
    return found


def owners(docs: list[dict[str, Any]]) -> dict[str, str]:
    """database -> the role owning it."""
    found: dict[str, str] = {}
    for doc in docs:
        if doc["apiVersion"] == CNPG and doc["kind"] == "Cluster":
            initdb = doc["spec"]["bootstrap"]["initdb"]
            found[initdb["database"]] = initdb["owner"]
        elif doc["apiVersion"] == CNPG and doc["kind"] == "Database":
            found[doc["spec"]["name"]] = doc["spec"]["owner"]
    return found


def as_compose(docs: list[dict[str, Any]], secret_keys: list[str]) -> dict[str, Any]:
    """The manifests' workloads as compose.yaml would write them (command, environment,
    secrets, image), the Secret's keys as files of ./secrets/: compose_support's checks then
    apply to them as they are. The downward API's pod name is POD_NAME."""
    svcs: dict[str, Any] = {}
    for name, workload in workloads(docs).items():
        env = {}
        for var, value in k8s_env(workload).items():
            if isinstance(value, dict):
                assert value == {"fieldRef": {"fieldPath": "metadata.name"}}, (name, var, value)
                value = POD_NAME
            env[var] = value
        svcs[name] = {
            "image": container(workload)["image"],
            "command": container(workload)["command"],
            "environment": env,
            "secrets": [{"source": k, "target": t} for t, k in k8s_mounts(workload).items()],
        }
    return {"services": svcs, "secrets": {k: {"file": f"./secrets/{k}"} for k in secret_keys}}


# -- the problems, each check as a function (test_checks_catch_mistakes breaks them) -------


def env_problems(compose: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    """Every service in both: the same variables with the same literal values, but for the
    Kubernetes-only ones; no variable from a Secret, nothing from envFrom."""
    problems = []
    k8s = workloads(docs)
    for name, svc in services(compose).items():
        if name not in k8s:
            continue
        if "envFrom" in container(k8s[name]):
            problems.append(f"{name}: envFrom")
        wanted: dict[str, Any] = {**environment(svc), **K8S_ONLY_ENV.get(name, {})}
        given = k8s_env(k8s[name])
        for var in sorted(set(wanted) | set(given)):
            if var not in given:
                problems.append(f"{name}: {var} is not set (compose: {wanted[var]!r})")
            elif var not in wanted:
                problems.append(f"{name}: {var}={given[var]!r} is not in compose.yaml")
            elif given[var] != wanted[var]:
                problems.append(f"{name}: {var}={given[var]!r}, compose: {wanted[var]!r}")
    return problems


def mount_problems(compose: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    """Every secret file compose mounts for a service is mounted at the same path from the
    same file of deploy/make_secrets.py, and nothing more."""
    problems = []
    k8s = workloads(docs)
    for name, svc in services(compose).items():
        if name not in k8s:
            continue
        want, got = mounts(svc), k8s_mounts(k8s[name])
        for target in sorted(set(want) | set(got)):
            if want.get(target) != got.get(target):
                problems.append(
                    f"{name}: {SECRETS_DIR}/{target} is {got.get(target)!r} "
                    f"(compose: {want.get(target)!r})"
                )
    return problems


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions) against a pod's labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def cnpg_pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Labels the operator gives each Postgres cluster's instance pods."""
    return {
        name: {"cnpg.io/cluster": name, "cnpg.io/podRole": "instance"}
        for name in of_kind([d for d in docs if d["apiVersion"] == CNPG], "Cluster")
    }


def allowed(
    docs: list[dict[str, Any]],
    namespace: str,
    dst: dict[str, str],
    port: int,
    src: tuple[str | None, dict[str, str]],
) -> bool:
    """Whether a connection from ``src`` to a pod labelled ``dst`` (in ``namespace``) on
    ``port`` is let in by the NetworkPolicies, as Kubernetes evaluates them."""
    src_ns, src_labels = src
    selecting = [
        p
        for p in of_kind(docs, "NetworkPolicy").values()
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and matches(p["spec"]["podSelector"], dst)
    ]
    if not selecting:
        return True  # not isolated

    def peer_ok(peer: dict[str, Any]) -> bool:
        assert "ipBlock" not in peer, "ipBlock is not evaluated here"
        if src_ns is None:
            return False
        if "namespaceSelector" in peer:
            ns_ok = matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": src_ns})
        else:
            ns_ok = src_ns == namespace
        return ns_ok and matches(peer.get("podSelector") or {}, src_labels)

    def port_ok(spec: dict[str, Any]) -> bool:
        assert isinstance(spec["port"], int), "named ports are not evaluated here"
        return bool(spec["port"] <= port <= spec.get("endPort", spec["port"]))

    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            peers, ports = rule.get("from") or [], rule.get("ports") or []
            if (not ports or any(port_ok(p) for p in ports)) and (
                not peers or any(peer_ok(p) for p in peers)
            ):
                return True
    return False


def network_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Who may reach whom (docs/kubernetes.md): the coordinators on 8000 from anywhere; a
    participant service on its port from the coordinators only, but orders from anywhere; each
    Postgres cluster on 5432 from the pods using it, everything from its own instances, the
    operator on 8000 and 5432; Prometheus the services' ports; nothing else."""
    namespace = kustomization()["namespace"]
    k8s = workloads(docs)
    labels = {name: pod_labels(w) for name, w in k8s.items()}
    ports = {
        name: int(k8s_env(k8s[name]).get("TXNP_PORT") or k8s_env(k8s[name])["TXN_PORT"])
        for name in labels
        if name != "migrate"
    }
    participants = [n for n in labels if n not in ("coordinator", "migrate")]
    ours = {name: (namespace, lbls) for name, lbls in labels.items()}
    stranger = (namespace, {"app": "something-else"})
    databases = cnpg_pods(docs)
    # Who uses which cluster: the coordinators the log's, each participant service its own
    # database's (named after it), the migration job all.
    where = cluster_of(docs)
    db_users: dict[str, set[str]] = {cluster: {"migrate"} for cluster in databases}
    db_users[where["txn_log"]].add("coordinator")
    for name in participants:
        db_users[where[name]].add(name)
    sources: dict[str, tuple[str | None, dict[str, str]]] = {
        **ours,
        "stranger": stranger,
        "outside": OUTSIDE,
        "other-namespace": OTHER_NAMESPACE,
        "operator": OPERATOR,
        "monitoring": MONITORING,
        **{f"db:{c}": (namespace, lbls) for c, lbls in databases.items()},
    }
    problems = []

    def expect(dst: str, dst_labels: dict[str, str], port: int, who: set[str]) -> None:
        for src_name, src in sources.items():
            got = allowed(docs, namespace, dst_labels, port, src)
            if got != (src_name in who):
                verb = "reaches" if got else "cannot reach"
                problems.append(f"{src_name} {verb} {dst}:{port}")

    everyone = set(sources)
    expect("coordinator", labels["coordinator"], 8000, everyone)
    expect("coordinator", labels["coordinator"], 9000, set())
    for name in participants:
        who = everyone if name == "orders" else {"coordinator", "monitoring"}
        expect(name, labels[name], ports[name], who)
        expect(name, labels[name], 9000, set())
    expect("migrate", labels["migrate"], 8000, set())
    expect("a stranger", stranger[1], 8000, set())
    for cluster, lbls in databases.items():
        expect(cluster, lbls, 5432, db_users[cluster] | {f"db:{cluster}", "operator"})
        expect(cluster, lbls, 8000, {f"db:{cluster}", "operator"})
        expect(cluster, lbls, 9187, {f"db:{cluster}"})
    return problems


def selector_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Every Service selects the pods of one Deployment, on ports its container has; every pod
    selector of a NetworkPolicy, the PodDisruptionBudget or the autoscaler selects pods that
    exist."""
    problems = []
    k8s = workloads(docs)
    deployments = of_kind(docs, "Deployment")
    pods = {n: pod_labels(w) for n, w in k8s.items()} | {
        f"db:{c}": lbls for c, lbls in cnpg_pods(docs).items()
    }
    for name, svc in of_kind(docs, "Service").items():
        selector = svc["spec"].get("selector") or {}
        selected = [
            d
            for d, w in deployments.items()
            if selector and matches({"matchLabels": selector}, pod_labels(w))
        ]
        if len(selected) != 1:
            problems.append(f"Service {name} selects {selected or 'no Deployment'}")
            continue
        ctr = container(deployments[selected[0]])
        by_name = {p.get("name"): p["containerPort"] for p in ctr.get("ports") or []}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            resolved = by_name.get(target) if isinstance(target, str) else target
            if resolved not in by_name.values():
                problems.append(f"Service {name}: targetPort {target} is no port of {selected[0]}")
    for name, policy in of_kind(docs, "NetworkPolicy").items():
        selectors = [policy["spec"]["podSelector"]] + [
            peer["podSelector"]
            for rule in policy["spec"].get("ingress") or []
            for peer in rule.get("from") or []
            if "podSelector" in peer and "namespaceSelector" not in peer
        ]
        for selector in selectors:
            if not any(matches(selector, lbls) for lbls in pods.values()):
                problems.append(f"NetworkPolicy {name}: {selector} selects no pod of the stack")
    for name, pdb in of_kind(docs, "PodDisruptionBudget").items():
        selected = sorted(n for n, lbls in pods.items() if matches(pdb["spec"]["selector"], lbls))
        if selected != ["coordinator"]:
            problems.append(f"PodDisruptionBudget {name} selects {selected}")
    for name, hpa in of_kind(docs, "HorizontalPodAutoscaler").items():
        ref = hpa["spec"]["scaleTargetRef"]
        target = (ref["apiVersion"], ref["kind"], ref["name"])
        if target != ("apps/v1", "Deployment", "coordinator"):
            problems.append(f"HorizontalPodAutoscaler {name} scales {ref}")
    return problems


def cluster_problems(cluster: dict[str, Any]) -> list[str]:
    """A CloudNativePG Cluster the stack can rely on: three instances or more, synchronous
    replication (either form CloudNativePG accepts, not both), 2PC enabled, no superuser
    over the network, pg_hba refusing what it does not admit."""
    name, spec = cluster["metadata"]["name"], cluster["spec"]
    problems = []
    instances = spec.get("instances", 1)
    if not isinstance(instances, int) or instances < 3:
        problems.append(f"{name}: {instances} instances, 3 or more needed")
        instances = 3
    sync = (spec.get("postgresql") or {}).get("synchronous")
    legacy = spec.get("minSyncReplicas", 0), spec.get("maxSyncReplicas", 0)
    if sync is not None and legacy != (0, 0):
        problems.append(f"{name}: synchronous and min/maxSyncReplicas both set")
    if sync is not None:
        if sync.get("method") not in ("any", "first"):
            problems.append(f"{name}: synchronous method {sync.get('method')!r}")
        number = sync.get("number")
        if not isinstance(number, int) or not 1 <= number < instances:
            problems.append(f"{name}: synchronous number {number!r}")
        if sync.get("dataDurability", "required") != "required":
            problems.append(f"{name}: dataDurability {sync.get('dataDurability')!r}")
    elif not 1 <= legacy[0] <= legacy[1] < instances:
        problems.append(f"{name}: no synchronous replication (min/maxSyncReplicas {legacy})")
    parameters = (spec.get("postgresql") or {}).get("parameters") or {}
    prepared = parameters.get("max_prepared_transactions")
    if not isinstance(prepared, str) or not prepared.isdigit() or int(prepared) <= 0:
        problems.append(f"{name}: max_prepared_transactions {prepared!r} (a string > 0)")
    if spec.get("enableSuperuserAccess", False):
        problems.append(f"{name}: the superuser is reachable")
    hba = (spec.get("postgresql") or {}).get("pg_hba") or []
    if not hba or hba[-1].split() != ["host", "all", "all", "all", "reject"]:
        problems.append(f"{name}: pg_hba must end by rejecting what it did not admit")
    return problems


def secret_value_problems(docs: list[dict[str, Any]], source: str) -> list[str]:
    """A Secret in a manifest holds placeholders only (a basic-auth username, the name of a
    database's owner role, is no secret); nothing anywhere looks like a real secret."""
    problems = []
    for doc in docs:
        if doc["kind"] == "Secret":
            values = dict(doc.get("stringData") or {})
            for key, value in (doc.get("data") or {}).items():
                values[key] = base64.b64decode(value).decode()
            for key, value in values.items():
                if doc.get("type") == "kubernetes.io/basic-auth" and key == "username":
                    if not re.fullmatch(r"[a-z0-9_]+_owner", str(value)):
                        problems.append(f"{source}: Secret {doc['metadata']['name']}: {value!r}")
                elif value != PLACEHOLDER:
                    problems.append(
                        f"{source}: Secret {doc['metadata']['name']}: {key} is not {PLACEHOLDER}"
                    )
        for text in strings(doc):
            if REAL_LOOKING.search(text):
                problems.append(f"{source}: {doc['kind']} {doc['metadata']['name']}: {text!r}")
    return problems


def strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*strings(k), *strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


# -- create-secrets.sh, with a stand-in for kubectl ----------------------------------------

# Records each call: its arguments, one a line, and the files it was given (--from-file=DIR
# or --from-file=KEY=FILE) as file.<key>, in a folder of its own under $FAKE_KUBECTL_LOG.
FAKE_KUBECTL = """#!/bin/sh
set -eu
call="$FAKE_KUBECTL_LOG/$(ls "$FAKE_KUBECTL_LOG" | wc -l | tr -d ' ')"
mkdir "$call"
printf '%s\\n' "$@" > "$call/args"
for arg in "$@"; do
    case $arg in
        --from-file=*=*) spec=${arg#--from-file=}; cp "${spec#*=}" "$call/file.${spec%%=*}" ;;
        --from-file=*)
            for f in "${arg#--from-file=}"/*; do cp "$f" "$call/file.$(basename "$f")"; done ;;
    esac
done
"""


@dataclass
class Created:
    """A Secret create-secrets.sh had kubectl create."""

    name: str
    namespace: str
    type: str
    data: dict[str, str] = field(default_factory=dict)


def run_create_secrets(folder: Path, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    bin_dir, log = work / "bin", work / "kubectl"
    bin_dir.mkdir(parents=True)
    log.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_KUBECTL_LOG": str(log),
    }
    return subprocess.run(
        ["bash", str(CREATE_SECRETS), str(folder), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def kubectl_calls(work: Path) -> list[Path]:
    return sorted((work / "kubectl").iterdir(), key=lambda p: int(p.name))


def created_secrets(work: Path) -> dict[str, Created]:
    found: dict[str, Created] = {}
    for call in kubectl_calls(work):
        args = (call / "args").read_text().splitlines()
        files = {f.name.removeprefix("file."): f.read_text() for f in call.glob("file.*")}
        assert "--namespace" in args, args
        namespace = args[args.index("--namespace") + 1]
        at = args.index("create")
        assert args[at : at + 3] == ["create", "secret", "generic"], args
        name = args[at + 3]
        kind = next((a.split("=", 1)[1] for a in args if a.startswith("--type=")), "Opaque")
        secret = Created(name, namespace, kind, files)
        for arg in args:
            if arg.startswith("--from-literal="):
                key, value = arg.removeprefix("--from-literal=").split("=", 1)
                secret.data[key] = value
        assert name not in found, f"{name} created twice"
        found[name] = secret
    return found


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
    base = tmp_path_factory.mktemp("k8s-secrets")
    admin = generate_secrets(base / "secrets")
    result = run_create_secrets(base / "secrets", base)
    assert result.returncode == 0, result.stderr
    return base / "secrets", created_secrets(base), admin


@pytest.fixture
def pod_secrets(
    made: tuple[Path, dict[str, Created], str], docs: list[dict[str, Any]], tmp_path: Path
) -> tuple[dict[str, Any], Path]:
    """The manifests as compose_support reads compose.yaml, and a folder standing in for
    ./secrets/ holding the Secret txn-secrets as created."""
    _folder, created, _admin = made
    for key, content in created[SECRET].data.items():
        (tmp_path / key).write_text(content)
    return as_compose(docs, sorted(created[SECRET].data)), tmp_path


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
    workload of the same name, with the same image and command (the migration job's:
    test_migrate_job_runs_composes_migrations)."""
    svcs = services(compose)
    k8s = workloads(docs)
    assert set(k8s) == set(svcs) - {"postgres"} == {"coordinator", "migrate", *LEDGERS, *SHOP}
    assert of_kind(docs, "Job").keys() == {"migrate"}
    for name, workload in k8s.items():
        ctr = container(workload)
        assert ctr["image"] == svcs[name]["image"], name
        if name != "migrate":
            assert ctr["command"] == svcs[name]["command"], name
            assert ctr.get("imagePullPolicy") == "IfNotPresent", name  # a local image
        assert pod_spec(workload).get("automountServiceAccountToken") is False, name
        security = pod_spec(workload)["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001, name
        assert ctr["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_environment_is_composes(compose: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """One source of truth: the same variables, the same values, but TXN_INSTANCE_ID (the
    pod's name) and TXN_OPEN_METRICS (the readiness probe) on the coordinators."""
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
        coordinator_port = svcs[url.hostname]["spec"]["ports"][0]["port"] if url.hostname else 0
        assert url.port == coordinator_port == 8000, name


def test_selectors_select_the_stacks_pods(docs: list[dict[str, Any]]) -> None:
    """Services, NetworkPolicies, the PodDisruptionBudget and the autoscaler select the pods
    they are about (the coordinators' for the last two)."""
    assert selector_problems(docs) == []
    pdb = of_kind(docs, "PodDisruptionBudget")["coordinator"]["spec"]
    hpa = of_kind(docs, "HorizontalPodAutoscaler")["coordinator"]["spec"]
    replicas = of_kind(docs, "Deployment")["coordinator"]["spec"]["replicas"]
    assert pdb["minAvailable"] == 1 < replicas
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (replicas, 6)
    assert hpa["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        }
    ]


def test_network_policies(docs: list[dict[str, Any]]) -> None:
    """Ingress is denied by default, then let in only as docs/kubernetes.md says."""
    policies = of_kind(docs, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert network_problems(docs) == []


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
