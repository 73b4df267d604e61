"""The operator's composition root: settings, one Kubernetes client, the Lease, kopf."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass

import kopf
from lightkube import AsyncClient, KubeConfig

from berth_operator.bindings import BindingGuard
from berth_operator.config import OperatorSettings
from berth_operator.crd_deletion import CrdDeletionWatcher
from berth_operator.handlers import build_registry, kopf_settings
from berth_operator.kube import Kube
from berth_operator.lease import LeaseGuard, LeaseLost
from berth_operator.metrics import OperatorMetrics
from berth_operator.reconciler import Reconciler, StepHook
from berth_operator.registry import Registries
from berth_operator.resource import MANAGER
from service.core.logging import configure_logging, get_logger
from service.core.metrics import serve_metrics

log = get_logger(__name__)

EXIT_LEASE_LOST = 3
# The CRD appeared after start: kopf serves it only after a restart (the kubelet's).
EXIT_RESTART = 4
LIVENESS_PATH = "/healthz"


def instance_identity() -> str:
    """Who holds the Lease: the pod's name (its hostname) and the process."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class OperatorApp:
    """Everything that lives as long as the operator process."""

    settings: OperatorSettings
    kube_config: KubeConfig
    client: AsyncClient
    metrics: OperatorMetrics
    reconciler: Reconciler
    identity: str

    async def close(self) -> None:
        await self.client.close()


def build_app(
    settings: OperatorSettings,
    kube_config: KubeConfig,
    *,
    identity: str | None = None,
    after_step: StepHook | None = None,
) -> OperatorApp:
    identity = identity or instance_identity()
    # trust_env off, as kopf's: proxy variables are for the outside world, not the API server.
    client = AsyncClient(config=kube_config, field_manager=MANAGER, trust_env=False)
    metrics = OperatorMetrics()
    kube = Kube(client, instance=identity)
    reconciler = Reconciler(
        kube=kube,
        registries=Registries(kube, settings.registry_secret, metrics),
        settings=settings,
        metrics=metrics,
        after_step=after_step,
    )
    return OperatorApp(settings, kube_config, client, metrics, reconciler, identity)


async def run(app: OperatorApp, *, stop: asyncio.Event | None = None) -> int:
    """Hold the Lease, run kopf until a signal or `stop`, hand the Lease back; the exit code."""
    settings = app.settings
    stop = stop or asyncio.Event()
    guard = LeaseGuard(
        app.client, settings.own_namespace, app.identity, settings.lease, app.metrics
    )
    stop_metrics = (
        serve_metrics(app.metrics.registry, settings.bind_host, settings.metrics_port)
        if settings.metrics_port
        else None
    )
    _stop_on_signals(stop)  # while waiting for the Lease; kopf installs its own later
    try:
        if not await guard.acquire(stop):
            return 0
        keeper = asyncio.create_task(guard.keep(stop))
        watcher = CrdDeletionWatcher(app.client, app.reconciler, settings.namespaces)
        watching = [asyncio.create_task(watcher.run(stop))]
        if settings.namespaces:  # cluster-wide, a ClusterRoleBinding needs no guard
            guard_bindings = BindingGuard(app.client, settings.namespaces)
            watching.append(asyncio.create_task(guard_bindings.run(stop)))
        try:
            await kopf.operator(
                registry=build_registry(app.reconciler, settings, app.kube_config),
                settings=kopf_settings(settings),
                standalone=True,
                clusterwide=not settings.namespaces,
                namespaces=settings.namespaces,
                liveness_endpoint=f"http://{settings.bind_host}:{settings.liveness_port}{LIVENESS_PATH}",
                stop_flag=stop,
            )
        finally:
            stop.set()
            await asyncio.gather(*watching)
            lost = await _settle(keeper)
        if lost:
            return EXIT_LEASE_LOST
        if watcher.restart_requested:
            await guard.release()
            return EXIT_RESTART
        await guard.release()
        return 0
    finally:
        if stop_metrics is not None:
            stop_metrics()
        await app.close()


def _stop_on_signals(stop: asyncio.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread's loop
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


async def _settle(keeper: asyncio.Task[None]) -> bool:
    """Wait for the Lease keeper; True when it lost the Lease."""
    try:
        await keeper
    except LeaseLost:
        return True
    except asyncio.CancelledError:
        return False
    return False


# Chatty at INFO: a line per API request (httpx2) and per liveness probe (aiohttp).
_QUIET_LOGGERS = ("httpx2", "httpx", "aiohttp.access")


def configure_operator_logging(settings: OperatorSettings) -> None:
    """The service's JSON log format, for kopf's loggers as well as ours."""
    configure_logging(settings.log)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def main_run(settings: OperatorSettings) -> int:
    configure_operator_logging(settings)
    kube_config = KubeConfig.from_env()
    log.info(
        "operator_starting",
        namespaces=settings.namespaces or "all",
        registry=settings.registry_secret,
        timer_seconds=settings.timer_seconds,
    )
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(build_app(settings, kube_config)))
    return 0
