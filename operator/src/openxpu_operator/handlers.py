"""kopf handlers (`openxpu-operator run`): thin triggers of the controller's one pass.

Progress and the last handled spec are kept in annotations under openxpu.io (not kopf's
default prefix), the finalizer is openxpu.io/finalizer. The resync interval is read from
OPENXPU_OPERATOR_RESYNC_SECONDS when this module is imported (kopf's timers are declared
at import), which `openxpu-operator run` sets from its flag first.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf

from openxpu_operator.controller import Controller
from openxpu_operator.policy import GROUP, PLURAL, VERSION
from openxpu_operator.watches import watch_operands

RESYNC_ENV = "OPENXPU_OPERATOR_RESYNC_SECONDS"
RESYNC_SECONDS = float(os.environ.get(RESYNC_ENV, "60"))
PREFIX = "openxpu.io"
FINALIZER = f"{PREFIX}/finalizer"
# A failed pass is retried this soon (kopf's default waits a minute).
RETRY_SECONDS = 5.0
# A step of the uninstall that waits (pods going, cleanup pods running) retries this often.
CLEANUP_RETRY_SECONDS = 3.0

log = logging.getLogger(__name__)


def _controller(memo: kopf.Memo) -> Controller:
    controller: Controller = memo["controller"]
    return controller


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX)
    settings.persistence.finalizer = FINALIZER
    # We post our own Events on state changes; kopf's per-handler ones would be noise.
    settings.posting.enabled = False
    settings.execution.max_workers = 4
    controller = _controller(memo)
    memo["tasks"] = [
        asyncio.create_task(controller.run_kicks()),
        *watch_operands(controller.kube, controller.settings.namespace, controller.kick),
    ]


@kopf.on.cleanup()
async def stop_kicks(memo: kopf.Memo, **_: Any) -> None:
    tasks: list[asyncio.Task[None]] = memo["tasks"]
    for task in tasks:
        task.cancel()


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=RETRY_SECONDS)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=RETRY_SECONDS)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=RETRY_SECONDS)
async def policy_changed(memo: kopf.Memo, **_: Any) -> None:
    await _controller(memo).sync()


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    interval=RESYNC_SECONDS,
    initial_delay=RESYNC_SECONDS,
    backoff=RETRY_SECONDS,
)
async def resync(memo: kopf.Memo, **_: Any) -> None:
    await _controller(memo).sync()


# async: kopf runs a sync handler in its thread pool, a thread hop per node event.
@kopf.on.event("", "v1", "nodes")
async def node_event(memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).kick()


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def policy_deleted(body: kopf.Body, memo: kopf.Memo, runtime: Any, **_: Any) -> None:
    controller = _controller(memo)
    progress = await controller.uninstall(dict(body), runtime.total_seconds())
    if not progress.done:
        raise kopf.TemporaryError(
            f"uninstalling: waiting for {progress.waiting_for}", delay=CLEANUP_RETRY_SECONDS
        )
    # The next oldest policy, if any, becomes active.
    controller.kick()
