"""What the checks of the Kubernetes manifests in deploy/k8s/ (docs/kubernetes.md) share:
test_k8s_manifests.py, test_k8s_network.py and test_k8s_secrets.py. Loading the resources
`kubectl apply -k deploy/k8s` creates and reading their workloads as compose.yaml would write
them; each check as a function returning its problems (test_checks_catch_mistakes breaks
them): environment and mounts against compose.yaml (coordinator1 and coordinator2 against the
Deployment coordinator), label selectors, the network policies evaluated for who may reach
whom, the CloudNativePG clusters, secret values; and create-secrets.sh run with a stand-in for
kubectl."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.unit.compose_support import (
    COORDINATOR_ALIAS,
    ROOT,
    SECRETS_DIR,
    coordinator_services,
    environment,
    generate_secrets,
    mounts,
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
# What Kubernetes gives a workload that compose does not, or gives otherwise (this replaces
# compose's value when they are compared): variable -> value, or the valueFrom.
K8S_ENV: dict[str, dict[str, Any]] = {
    COORDINATOR_ALIAS: {  # the coordinators' one Deployment, named as compose's alias
        # Unique among live pods, the same across restarts (compose: one per service).
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


def workload_name(svcs: dict[str, dict[str, Any]], name: str) -> str:
    """The workload of compose service ``name``: coordinator for coordinator1 and coordinator2
    (the network alias they share), else the same name."""
    return COORDINATOR_ALIAS if name in coordinator_services(svcs) else name


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployments and Jobs by name (compose's service names: workload_name)."""
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


Pair = tuple[str, str, dict[str, Any], dict[str, Any]]


def counterparts(compose: dict[str, Any], docs: list[dict[str, Any]]) -> list[Pair]:
    """(service, workload name, compose service, workload) for each service in both."""
    k8s, svcs = workloads(docs), services(compose)
    return [(n, w, svc, k8s[w]) for n, svc in svcs.items() if (w := workload_name(svcs, n)) in k8s]


def env_problems(compose: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    """Every service in both (counterparts): the same variables, the same literal values, but
    K8S_ENV's (TXN_INSTANCE_ID); no variable from a Secret, nothing from envFrom."""
    problems = []
    for label, name, svc, workload in counterparts(compose, docs):
        if "envFrom" in container(workload):
            problems.append(f"{label}: envFrom")
        wanted: dict[str, Any] = {**environment(svc), **K8S_ENV.get(name, {})}
        given = k8s_env(workload)
        for var in sorted(set(wanted) | set(given)):
            if var not in given:
                problems.append(f"{label}: {var} is not set (compose: {wanted[var]!r})")
            elif var not in wanted:
                problems.append(f"{label}: {var}={given[var]!r} is not in compose.yaml")
            elif given[var] != wanted[var]:
                problems.append(f"{label}: {var}={given[var]!r}, compose: {wanted[var]!r}")
    return problems


def mount_problems(compose: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    """Every secret file compose mounts for a service (counterparts) is mounted at the same
    path from the same file of deploy/make_secrets.py, and nothing more."""
    problems = []
    for label, _name, svc, workload in counterparts(compose, docs):
        want, got = mounts(svc), k8s_mounts(workload)
        for target in sorted(set(want) | set(got)):
            if want.get(target) != got.get(target):
                problems.append(
                    f"{label}: {SECRETS_DIR}/{target} is {got.get(target)!r} "
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


# -- what the fixtures of the test modules make --------------------------------------------


def create_secrets(base: Path) -> tuple[Path, dict[str, Created], str]:
    """deploy/make_secrets.py's folder (under ``base``), the Secrets create-secrets.sh creates
    from it, and the admin token make_secrets.py printed."""
    admin = generate_secrets(base / "secrets")
    result = run_create_secrets(base / "secrets", base)
    assert result.returncode == 0, result.stderr
    return base / "secrets", created_secrets(base), admin


def pod_secrets_in(
    made: tuple[Path, dict[str, Created], str], docs: list[dict[str, Any]], folder: Path
) -> tuple[dict[str, Any], Path]:
    """The manifests as compose_support reads compose.yaml, and ``folder`` standing in for
    ./secrets/ holding the Secret txn-secrets as created."""
    _folder, created, _admin = made
    for key, content in created[SECRET].data.items():
        (folder / key).write_text(content)
    return as_compose(docs, sorted(created[SECRET].data)), folder
