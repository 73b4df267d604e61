"""kopf's side: which events run which reconciliation, and how failures become retries.

Thin on purpose: every handler parses the object, calls the `Reconciler`, counts the result
and turns a temporary failure into `kopf.TemporaryError` (retried after the backoff the
status shows) and a permanent one into `kopf.PermanentError` (reported once, not retried
until the Tenant changes; the drift timer looks again at its own pace).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from lightkube import KubeConfig
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import User

from berth_operator.config import OperatorSettings
from berth_operator.errors import ReconcileFailed
from berth_operator.metrics import Handler, OperatorMetrics, Result
from berth_operator.reconciler import Reconciler
from berth_operator.resource import FINALIZER, GROUP, PLURAL, VERSION, Tenant

PROGRESS_KEY = "last-handled-configuration"
KOPF_PREFIX = f"kopf.{GROUP}"
# Watches are re-opened this often, so a silently dropped connection cannot stall them.
WATCH_SERVER_TIMEOUT_SECONDS = 120
WATCH_CLIENT_TIMEOUT_SECONDS = 150
API_CONNECT_TIMEOUT_SECONDS = 10


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    """kopf's knobs: our finalizer and annotations, no log-to-Event posting (the reconciler
    posts its own Events), watches that time out."""
    configured = kopf.OperatorSettings()
    configured.persistence.finalizer = FINALIZER
    # A prefix of kopf's own: kopf leaves every annotation under its prefix out of change
    # detection, so under `berth.dev` it would ignore berth.dev/rotate-credentials.
    configured.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    configured.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key=PROGRESS_KEY
    )
    configured.posting.enabled = False
    configured.watching.server_timeout = WATCH_SERVER_TIMEOUT_SECONDS
    configured.watching.client_timeout = WATCH_CLIENT_TIMEOUT_SECONDS
    configured.watching.connect_timeout = API_CONNECT_TIMEOUT_SECONDS
    configured.networking.connect_timeout = API_CONNECT_TIMEOUT_SECONDS
    configured.peering.standalone = True
    # No scanning of namespaces and CRDs: the namespaces are named exactly (or all), so it
    # would only need cluster-wide list/watch on both, and the CRD's deletion is handled by
    # berth_operator.crd_deletion, which needs `get` on that one CRD.
    configured.scanning.disabled = True
    return configured


def connection_info(config: SingleConfig) -> kopf.ConnectionInfo:
    """kopf logs in with what lightkube read (in-cluster account or kubeconfig), so both
    clients always talk to the same server as the same identity."""
    cluster, user = config.cluster, config.user or User()
    token = user.token
    if user.token_file:  # re-read on every login: in-cluster tokens rotate
        with open(user.token_file, encoding="utf-8") as handle:  # noqa: PTH123
            token = handle.read().strip()
    return kopf.ConnectionInfo(
        server=cluster.server,
        ca_path=cluster.certificate_auth,
        ca_data=cluster.certificate_auth_data,
        insecure=cluster.insecure or None,
        token=token,
        certificate_path=user.client_cert,
        certificate_data=user.client_cert_data,
        private_key_path=user.client_key,
        private_key_data=user.client_key_data,
        username=user.username,
        password=user.password,
        default_namespace=config.namespace,
    )


async def _run(
    metrics: OperatorMetrics, handler: Handler, work: Callable[[], Awaitable[object]]
) -> None:
    try:
        await work()
    except ReconcileFailed as exc:
        failure = exc.failure
        result = Result.TEMPORARY_ERROR if failure.temporary else Result.PERMANENT_ERROR
        metrics.reconciles.labels(handler.value, result.value).inc()
        if failure.temporary:
            raise kopf.TemporaryError(failure.text, delay=failure.retry_seconds or 0) from None
        raise kopf.PermanentError(failure.text) from None
    metrics.reconciles.labels(handler.value, Result.SUCCESS.value).inc()


def build_registry(
    reconciler: Reconciler, settings: OperatorSettings, kube_config: KubeConfig
) -> kopf.OperatorRegistry:
    """The handlers of one operator, on a registry of their own (no module-level state)."""
    registry = kopf.OperatorRegistry()
    metrics = reconciler.metrics
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        config = kube_config.get()
        assert config is not None
        return connection_info(config)

    def changed(handler: Handler) -> Callable[..., Awaitable[None]]:
        async def reconcile(*, body: kopf.Body, retry: int, **_: Any) -> None:
            tenant = Tenant.from_body(body)
            await _run(metrics, handler, lambda: reconciler.reconcile(tenant, handler, retry=retry))

        return reconcile

    kopf.on.create(*resource, id=Handler.CREATE.value, registry=registry)(changed(Handler.CREATE))
    kopf.on.update(*resource, id=Handler.UPDATE.value, registry=registry)(changed(Handler.UPDATE))
    kopf.on.resume(*resource, id=Handler.RESUME.value, registry=registry)(changed(Handler.RESUME))

    @kopf.timer(
        *resource,
        id=Handler.TIMER.value,
        interval=settings.timer_seconds,
        initial_delay=settings.timer_seconds,
        registry=registry,
    )
    async def drift(*, body: kopf.Body, retry: int = 0, **_: Any) -> None:
        tenant = Tenant.from_body(body)
        if tenant.is_deleting:
            return
        try:
            await _run(
                metrics,
                Handler.TIMER,
                lambda: reconciler.reconcile(tenant, Handler.TIMER, retry=retry),
            )
        except kopf.PermanentError:
            return  # in the status already; look again at the next interval

    @kopf.on.delete(*resource, id=Handler.DELETE.value, registry=registry)
    async def cleanup(*, body: kopf.Body, retry: int, **_: Any) -> None:
        tenant = Tenant.from_body(body)
        await _run(metrics, Handler.DELETE, lambda: reconciler.delete(tenant, retry=retry))

    return registry
