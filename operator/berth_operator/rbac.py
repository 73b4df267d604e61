"""The RBAC the operator needs, defined once: the chart renders it, the end-to-end test
binds exactly this to the operator's ServiceAccount (RBAC is enforced there, so a missing or
an excess rule shows).

In each namespace it watches: Tenants (watch them, patch kopf's finalizer and annotations),
their status, Secrets (read a server's admin URL; create and update the tenants' credentials
and the registry; no list or watch: it never needs to see other Secrets), Events (create).
In its own namespace: the single-instance Lease, and the default server's Secret.
Cluster-wide: `get` on the one CRD tenants.berth.dev, to finish Tenants while it is deleted.
"""

from __future__ import annotations

from typing import Any

import yaml

from berth_operator.resource import CRD_NAME, GROUP, MANAGER, PLURAL

Manifest = dict[str, Any]

TENANTS_BINDING = f"{MANAGER}-tenants"
# Why each rule is there (operator/README.md has the long form):
TENANT_NAMESPACE_RULES: list[Manifest] = [
    # kopf lists and watches Tenants, and patches them for its finalizer and bookkeeping; the
    # CRD-deletion helper removes the finalizer with a JSON patch. No `get`: nothing reads one.
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["list", "watch", "patch"]},
    # The status is written with a merge patch on the subresource, never read back.
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["patch"]},
    # Secrets by name only (server, credentials, registry): read, first write, replace with
    # the resourceVersion read. No list/watch (every Secret of the namespace), no delete (the
    # garbage collector deletes a Tenant's credentials through its ownerReference).
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update"]},
    # One new Event per report (kopf's own Event posting is off).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    # Its own RoleBinding, to hold it with a finalizer (berth_operator.bindings): deleting the
    # namespace would otherwise take the operator's rights before its Tenants are finished.
    # Bound in a namespace, `get namespaces` reads that one namespace: is it being deleted?
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["rolebindings"],
        "resourceNames": [TENANTS_BINDING],
        "verbs": ["get", "patch"],
    },
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
]
OPERATOR_NAMESPACE_RULES: list[Manifest] = [
    # The single-instance Lease: read, create once, take over/renew/hand back by replace.
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "create", "update"],
    },
    # The default server's admin URL Secret.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
]
# Cluster-wide, but for one object: to notice the CRD being deleted (berth_operator.crd_deletion).
CRD_RULES: list[Manifest] = [
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "resourceNames": [CRD_NAME],
        "verbs": ["get"],
    }
]
TENANTS_ROLE = f"{MANAGER}-tenants"
OWN_ROLE = f"{MANAGER}-lease"
CRD_ROLE = f"{MANAGER}-crd"


def _role(kind: str, name: str, namespace: str | None, rules: list[Manifest]) -> Manifest:
    metadata: Manifest = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "rules": rules,
    }


def _binding(
    kind: str,
    role_kind: str,
    role: str,
    namespace: str | None,
    account: tuple[str, str],
    *,
    name: str | None = None,
) -> Manifest:
    metadata: Manifest = {"name": name or role}
    if namespace is not None:
        metadata["namespace"] = namespace
    account_namespace, account_name = account
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [
            {"kind": "ServiceAccount", "name": account_name, "namespace": account_namespace}
        ],
    }


def manifests(
    operator_namespace: str, service_account: str, watched: list[str] | None = None
) -> list[Manifest]:
    """Roles and bindings for an operator in `operator_namespace` watching `watched`
    namespaces (None or empty: every namespace).

    The Tenant rules are one ClusterRole (it must outlive a namespace being deleted), bound
    in each watched namespace by a RoleBinding, or cluster-wide by a ClusterRoleBinding.
    """
    account = (operator_namespace, service_account)
    # Cluster-scoped names are shared by every install: the operator's namespace tells them apart.
    crd_role = f"{CRD_ROLE}-{operator_namespace}"
    tenants_role = f"{TENANTS_ROLE}-{operator_namespace}"
    out = [
        _role("Role", OWN_ROLE, operator_namespace, OPERATOR_NAMESPACE_RULES),
        _binding("RoleBinding", "Role", OWN_ROLE, operator_namespace, account),
        _role("ClusterRole", crd_role, None, CRD_RULES),
        _binding("ClusterRoleBinding", "ClusterRole", crd_role, None, account),
        _role("ClusterRole", tenants_role, None, TENANT_NAMESPACE_RULES),
    ]
    if not watched:
        out.append(_binding("ClusterRoleBinding", "ClusterRole", tenants_role, None, account))
        return out
    for namespace in watched:
        out.append(
            _binding(
                "RoleBinding", "ClusterRole", tenants_role, namespace, account, name=TENANTS_BINDING
            )
        )
    return out


def render_yaml(
    operator_namespace: str, service_account: str, watched: list[str] | None = None
) -> str:
    return yaml.safe_dump_all(
        manifests(operator_namespace, service_account, watched), sort_keys=False
    )


CHART_RULES_HEADER = (
    "# Generated by `python -m berth_operator rbac-rules` from berth_operator/rbac.py: the\n"
    "# chart renders the operator's Roles and bindings from it. Do not edit; a test compares.\n"
)


def chart_rules() -> Manifest:
    """The names and rule sets the chart builds the operator's RBAC from, so that the chart
    and `manifests()` (which the end-to-end test binds) cannot drift apart."""
    return {
        "names": {
            "leaseRole": OWN_ROLE,
            "crdRolePrefix": CRD_ROLE,
            "tenantsRolePrefix": TENANTS_ROLE,
            "tenantsBinding": TENANTS_BINDING,
        },
        "rules": {
            "lease": OPERATOR_NAMESPACE_RULES,
            "crd": CRD_RULES,
            "tenants": TENANT_NAMESPACE_RULES,
        },
    }


def render_chart_rules_yaml() -> str:
    return CHART_RULES_HEADER + yaml.safe_dump(chart_rules(), sort_keys=False)
