"""The label selectors and network policies of the Kubernetes manifests in deploy/k8s/
(docs/kubernetes.md): every Service, NetworkPolicy, PodDisruptionBudget and autoscaler
selects the stack's pods it is about, and the network policies, evaluated as Kubernetes does,
let in who may reach whom and nobody else (k8s_support.py holds the evaluation)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.k8s_support import manifests, network_problems, of_kind, selector_problems

# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return manifests()


# -- the tests -----------------------------------------------------------------------------


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
