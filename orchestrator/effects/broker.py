"""The fleet's broker: Celery on RabbitMQ. A message carries a run's id and nothing else (the
worker reads the run from the database); one queue per label (`orchestrator.linux`,
`orchestrator.windows`); a worker holds one message at a time per build slot and acknowledges
it when the build ends (late acknowledgement), so the broker hands the run to another worker
when this one's connection drops. Cancel is a Celery control message to the host that builds.
"""
from __future__ import annotations

from typing import Any

from orchestrator.config import Config
from orchestrator.core.fleet import queue_name
from orchestrator.core.redact import scrub
from orchestrator.errors import EnvironmentProblem

BUILD_TASK = "orchestrator.build"
CANCEL_COMMAND = "orchestrator_cancel"
CONNECT_SECONDS = 5.0


def worker_name(host: str) -> str:
    """The Celery node name of a build host (control messages go to it)."""
    return f"orchestrator@{host}"


def celery_app(config: Config) -> Any:
    from celery import Celery

    assert config.fleet is not None
    app = Celery("orchestrator", broker=config.fleet.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,  # acknowledged when the build ends: a worker that dies gives it back
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a worker holds no run it is not building
        task_ignore_result=True,  # the run's record is in the database
        task_serializer="json", accept_content=["json"],
        broker_connection_timeout=CONNECT_SECONDS,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits for the broker to come back
        broker_heartbeat=10,  # a dead worker's connection, and its unacknowledged run, drop within seconds
        worker_cancel_long_running_tasks_on_connection_loss=False,  # a build outlives a broker restart
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_create_missing_queues=True,
        task_default_queue=queue_name("linux"),
    )
    return app


def broker_problem(config: Config, exc: BaseException) -> EnvironmentProblem:
    assert config.fleet is not None
    return EnvironmentProblem(
        f"the fleet's broker {scrub(config.fleet.broker_url)} cannot be reached: {scrub(str(exc)) or type(exc).__name__}",
        hint="start RabbitMQ on the control host (or check [fleet] broker); runs submitted meanwhile stay "
             "Queued in the database and a worker dispatches them when the broker is back")


def publish(config: Config, run_id: str, label: str) -> None:
    """Sends the run to its label's queue; EnvironmentProblem when the broker cannot be reached."""
    from kombu.exceptions import OperationalError

    app = celery_app(config)
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=CONNECT_SECONDS)
            app.send_task(BUILD_TASK, args=[run_id], queue=queue_name(label), connection=connection,
                          retry=False)
    except (OperationalError, OSError) as exc:
        raise broker_problem(config, exc) from None


def send_cancel(config: Config, host: str, run_id: str) -> bool:
    """A control message to the worker of `host`: True when it answered that it signalled the build."""
    from kombu.exceptions import OperationalError

    app = celery_app(config)
    try:
        replies = app.control.broadcast(CANCEL_COMMAND, arguments={"run_id": run_id},
                                        destination=[worker_name(host)], reply=True, timeout=CONNECT_SECONDS)
    except (OperationalError, OSError) as exc:
        raise broker_problem(config, exc) from None
    return any(reply.get(worker_name(host), {}).get("ok") for reply in replies or [])


def queue_depths(config: Config, labels: list[str]) -> dict[str, int | None]:
    """Messages waiting in each label's queue (None: the queue does not exist yet)."""
    from kombu.exceptions import OperationalError

    app = celery_app(config)
    depths: dict[str, int | None] = {}
    try:
        with app.connection_for_read() as connection:
            channel = connection.channel()
            for label in labels:
                try:
                    depths[label] = channel.queue_declare(queue_name(label), passive=True).message_count
                except Exception:  # noqa: BLE001 - amqp's NOT_FOUND closes the channel
                    depths[label] = None
                    channel = connection.channel()
    except (OperationalError, OSError) as exc:
        raise broker_problem(config, exc) from None
    return depths
