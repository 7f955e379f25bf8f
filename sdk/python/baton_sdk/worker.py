"""`Worker`: serves custom task handlers over `WorkerService.Connect`.

Threads:
- the caller's thread runs `Worker.run`: the control loop (heartbeats,
  timeouts, the drain deadline, signals) until the worker has drained;
- one connection thread owns the stream: it opens it (`Register` first,
  then everything unacknowledged), reads controller messages, and reopens it
  with backoff when it fails, following leader redirects;
- one daemon thread per attempt runs the handler.

All attempt state lives in `Worker._attempts` under one lock. Messages go to
the current stream through its queue, so an attempt's log chunks always
precede its result. Results and log bytes are kept until the controller
acknowledges them and are sent again on the next stream.

Python threads cannot be killed: on `Cancel`, a stale `Ack`, a timeout or
the end of the drain grace the attempt is reported at once and its handler
is told through `TaskContext.cancelled`; whatever the handler returns later
is dropped.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from baton_sdk import __version__
from baton_sdk._address import CHANNEL_OPTIONS, jittered, leader_from_error, parse_addrs
from baton_sdk._gen.baton.v1 import types_pb2, worker_pb2, worker_pb2_grpc

Handler = Callable[[Any, "TaskContext"], Any]

HANDLER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MAX_SLOTS = 10_000
# Heartbeat interval when `Registered` carries none.
DEFAULT_HEARTBEAT_INTERVAL = 5.0
# How often the control loop looks at timers.
CONTROL_TICK = 0.05
# Reconnect backoff: starts here, doubles up to `max_backoff`.
INITIAL_BACKOFF = 0.1
MAX_REDIRECTS_IN_A_ROW = 3
# After the last attempt finished while draining: how long to wait for the
# controller to acknowledge the remaining results.
FINAL_ACK_WAIT = 5.0
# How long the controller gets to end the stream after the worker closed its side.
CLOSE_WAIT = 2.0
# Largest LogChunk sent.
MAX_LOG_CHUNK = 64 * 1024
# HTTP/2 pings notice a frozen controller; heartbeats keep the stream busy,
# so grpc-core's ping limits are never reached.
STREAM_OPTIONS = CHANNEL_OPTIONS + [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]

logger = logging.getLogger("baton_sdk.worker")


class TaskContext:
    """What a handler knows about the attempt it runs, and its log."""

    def __init__(self, assign: worker_pb2.Assign, attempt: _Attempt, worker: Worker) -> None:
        self.attempt_id: str = assign.attempt_id
        self.dag_id: str = assign.dag_id
        self.run_id: str = assign.run_id
        self.task_id: str = assign.task_id
        # Attempt number, starting at 1.
        self.attempt: int = assign.attempt
        self.handler: str = assign.custom.handler
        # The run's parameters.
        self.params: dict[str, Any] = json.loads(assign.params_json or "{}")
        self.logical_date: datetime | None = (
            assign.logical_date.ToDatetime() if assign.HasField("logical_date") else None
        )
        self._attempt = attempt
        self._worker = worker

    def log(self, text: str) -> None:
        """Appends `text` (a newline added when missing) to the attempt's log,
        which `baton logs` and `ReadTaskLog` show."""
        if not text.endswith("\n"):
            text += "\n"
        self._worker._append_log(self._attempt, text.encode("utf-8"))

    @property
    def cancelled(self) -> bool:
        """True once the attempt was cancelled, timed out or is no longer
        current: the handler should stop, its result will be dropped."""
        return self._attempt.cancel.is_set()

    def wait_cancelled(self, timeout: float) -> bool:
        """Sleeps up to `timeout` seconds, returning early (True) on cancellation."""
        return self._attempt.cancel.wait(timeout)


@dataclass(eq=False)
class _Attempt:
    attempt_id: str
    # When the handler started, once it has.
    started_at: timestamp_pb2.Timestamp | None = None
    # Unacknowledged log as (offset, bytes), contiguous.
    log: list[tuple[int, bytes]] = field(default_factory=list)
    log_end: int = 0
    acked_log_offset: int = 0
    # Set once reported: the result stays until the controller records it
    # (then None).
    finished: bool = False
    result: worker_pb2.TaskResult | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    # Monotonic time past which the attempt is reported TIMED_OUT.
    deadline: float | None = None
    timeout_seconds: float = 0.0


@dataclass(eq=False)
class _Stream:
    queue: queue.Queue[worker_pb2.WorkerMessage | None] = field(default_factory=queue.Queue)
    registered: bool = False
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    next_heartbeat: float = 0.0


@dataclass
class _Draining:
    deadline: float
    cancelled_remaining: bool = False
    give_up_at: float | None = None


class Worker:
    """A Baton worker serving custom task handlers.

    `handlers` maps handler names (1-128 of `[A-Za-z0-9_.-]`) to functions
    `fn(payload, context)`: `payload` is the task's `payload` from the DAG
    (None when it has none), `context` a `TaskContext`. The function's return
    value (JSON-serialisable; None for no output) becomes the task's output;
    an exception fails the attempt with its message.

    `run()` blocks until the worker has drained: after a controller `Drain`,
    `drain()`, or SIGTERM/SIGINT (when `handle_signals`; a second signal stops
    at once).
    """

    def __init__(
        self,
        addr: str,
        worker_id: str | None = None,
        handlers: Mapping[str, Handler] | None = None,
        *,
        queues: Sequence[str] = ("default",),
        slots: int = 4,
        labels: Mapping[str, str] | None = None,
        drain_grace: float = 60.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._targets = parse_addrs(addr)
        self.worker_id = worker_id or str(uuid.uuid4())
        self._handlers = dict(handlers or {})
        for name in self._handlers:
            if not HANDLER_NAME.match(name):
                raise ValueError(f"invalid handler name `{name}`: 1-128 of [A-Za-z0-9_.-]")
        if not queues:
            raise ValueError("a worker needs at least one queue")
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be 1..={MAX_SLOTS}, not {slots}")
        self._queues = list(queues)
        self._slots = slots
        self._labels = dict(labels or {})
        self._drain_grace = drain_grace
        self._max_backoff = max_backoff

        self._lock = threading.RLock()
        self._attempts: dict[str, _Attempt] = {}
        self._stream: _Stream | None = None
        self._draining: _Draining | None = None
        # Set by `drain()` and signal handlers, read by the control loop
        # (signal handlers must not take the lock).
        self._drain_requested = False
        self._signals_seen = 0
        self._closing = threading.Event()
        self._fatal: BaseException | None = None

    def drain(self) -> None:
        """Asks the worker to drain; thread-safe. `run()` returns once it has."""
        self._drain_requested = True

    def run(self, *, handle_signals: bool = True) -> None:
        """Serves until drained. Raises when the controller refuses the
        registration itself (for example an invalid handler name)."""
        previous_handlers = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous_handlers[signum] = signal.signal(signum, self._on_signal)
        logger.info(
            "worker %s starting: handlers %s, queues %s, %d slots",
            self.worker_id,
            sorted(self._handlers),
            self._queues,
            self._slots,
        )
        connection = threading.Thread(
            target=self._connection_loop, name="baton-worker-connection", daemon=True
        )
        connection.start()
        try:
            self._control_loop()
        finally:
            self._closing.set()
            with self._lock:
                stream = self._stream
            if stream is not None:
                stream.queue.put(None)
            connection.join(CLOSE_WAIT + 1.0)
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        if self._fatal is not None:
            raise self._fatal
        logger.info("worker stopped")

    # ---- control loop (the caller's thread) ----

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals_seen += 1
        self._drain_requested = True

    def _control_loop(self) -> None:
        # Bounded by the drain: every iteration sleeps CONTROL_TICK, and the
        # loop ends once drained, on a second signal or a fatal error.
        while self._fatal is None and self._signals_seen < 2:
            now = time.monotonic()
            with self._lock:
                if self._drain_requested and self._draining is None:
                    self._begin_draining(self._drain_grace)
                stream = self._stream
                if stream is not None and stream.registered and now >= stream.next_heartbeat:
                    self._send_heartbeat()
                self._check_timeouts(now)
                if self._draining is not None and self._drained(now):
                    return
            time.sleep(CONTROL_TICK)
        if self._signals_seen >= 2:
            logger.warning("second signal: stopping without waiting for running attempts")

    def _check_timeouts(self, now: float) -> None:
        for attempt in list(self._attempts.values()):
            if not attempt.finished and attempt.deadline is not None and now >= attempt.deadline:
                attempt.cancel.set()
                self._finish(
                    attempt,
                    types_pb2.ATTEMPT_OUTCOME_TIMED_OUT,
                    error=f"ran past its timeout of {attempt.timeout_seconds:g}s",
                )

    def _drained(self, now: float) -> bool:
        draining = self._draining
        assert draining is not None
        running = self._running()
        if running and now >= draining.deadline and not draining.cancelled_remaining:
            logger.warning(
                "drain grace is over; reporting %d attempts still running as drained",
                len(running),
            )
            for attempt in running:
                attempt.cancel.set()
                self._finish(
                    attempt,
                    types_pb2.ATTEMPT_OUTCOME_WORKER_DRAINED,
                    error="the worker was drained while the attempt ran",
                )
            draining.cancelled_remaining = True
            running = []
        if running:
            return False
        if not self._attempts:
            return True
        if draining.give_up_at is None:
            logger.info("every attempt finished; waiting for the controller to acknowledge them")
            draining.give_up_at = now + FINAL_ACK_WAIT
        elif now >= draining.give_up_at:
            logger.warning("stopping with results the controller has not acknowledged")
            return True
        return False

    def _begin_draining(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        if self._draining is None:
            logger.info(
                "draining: taking no new work (grace %.1fs, %d running)",
                grace,
                len(self._running()),
            )
            self._draining = _Draining(deadline=deadline)
            self._send_heartbeat()
        elif not self._draining.cancelled_remaining and deadline < self._draining.deadline:
            self._draining.deadline = deadline

    # ---- the stream (connection thread) ----

    def _connection_loop(self) -> None:
        target = self._targets[0]
        backoff = INITIAL_BACKOFF
        redirects_in_a_row = 0
        # Bounded by `_closing`: every failure waits for the backoff (or
        # follows at most MAX_REDIRECTS_IN_A_ROW redirects at once).
        while not self._closing.is_set():
            stream = _Stream()
            with self._lock:
                stream.queue.put(self._register_message())
                for message in self._resend_messages():
                    stream.queue.put(message)
                self._stream = stream
            channel = grpc.insecure_channel(target, options=STREAM_OPTIONS)
            leader = None
            try:
                stub = worker_pb2_grpc.WorkerServiceStub(channel)
                for message in stub.Connect(self._outbound(stream)):
                    self._on_controller_message(stream, target, message)
                    if stream.registered:
                        backoff = INITIAL_BACKOFF
                        redirects_in_a_row = 0
                failure = "the controller closed the stream"
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else None
                details = error.details() if isinstance(error, grpc.Call) else str(error)
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    self._fatal = RuntimeError(f"the controller refused the worker: {details}")
                    return
                leader = leader_from_error(error)
                failure = f"{code.name if code else 'error'}: {details}"
            finally:
                with self._lock:
                    if self._stream is stream:
                        self._stream = None
                stream.queue.put(None)
                channel.close()
            if self._closing.is_set():
                return
            if leader is not None and leader != target and redirects_in_a_row < MAX_REDIRECTS_IN_A_ROW:
                logger.info("redirected to the leader at %s", leader)
                target = leader
                redirects_in_a_row += 1
                continue
            if leader is not None:
                target = leader
            elif not stream.registered:
                index = self._targets.index(target) if target in self._targets else -1
                target = self._targets[(index + 1) % len(self._targets)]
            delay = jittered(backoff)
            logger.warning(
                "disconnected from the controller (%s); retrying %s in %.2fs", failure, target, delay
            )
            backoff = min(backoff * 2, self._max_backoff)
            self._closing.wait(delay)

    @staticmethod
    def _outbound(stream: _Stream) -> Iterator[worker_pb2.WorkerMessage]:
        # Ends when the stream is closed (None is queued on every exit path).
        while True:
            message = stream.queue.get()
            if message is None:
                return
            yield message

    def _send(self, message: worker_pb2.WorkerMessage) -> None:
        """Queues a message on the current stream; dropped when there is none
        (what matters is resent after the next Register)."""
        if self._stream is not None:
            self._stream.queue.put(message)

    def _register_message(self) -> worker_pb2.WorkerMessage:
        announced = [
            attempt.attempt_id
            for attempt in self._attempts.values()
            if not attempt.finished or attempt.result is not None
        ]
        return worker_pb2.WorkerMessage(
            register=worker_pb2.Register(
                worker_id=self.worker_id,
                hostname=socket.gethostname(),
                queues=self._queues,
                labels=self._labels,
                slots=self._slots,
                attempt_ids=announced,
                version=f"baton-sdk-python {__version__}",
                handlers=sorted(self._handlers),
                # Commands and sensors go to `baton worker`s only.
                runs_commands=False,
                runs_sensors=False,
            )
        )

    def _resend_messages(self) -> list[worker_pb2.WorkerMessage]:
        messages = []
        for attempt in self._attempts.values():
            for offset, data in attempt.log:
                skip = max(0, attempt.acked_log_offset - offset)
                if skip < len(data):
                    messages.append(_log_chunk(attempt.attempt_id, offset + skip, data[skip:]))
            if not attempt.finished and attempt.started_at is not None:
                messages.append(_task_started(attempt.attempt_id, attempt.started_at))
            elif attempt.result is not None:
                messages.append(worker_pb2.WorkerMessage(task_result=attempt.result))
        return messages

    def _send_heartbeat(self) -> None:
        stream = self._stream
        if stream is None or not stream.registered:
            return
        running = self._running()
        free_slots = 0 if self._draining is not None else max(0, self._slots - len(running))
        self._send(
            worker_pb2.WorkerMessage(
                heartbeat=worker_pb2.Heartbeat(
                    free_slots=free_slots,
                    running_attempt_ids=[attempt.attempt_id for attempt in running],
                    draining=self._draining is not None,
                )
            )
        )
        stream.next_heartbeat = time.monotonic() + stream.heartbeat_interval

    def _running(self) -> list[_Attempt]:
        return [attempt for attempt in self._attempts.values() if not attempt.finished]

    def _on_controller_message(
        self, stream: _Stream, target: str, message: worker_pb2.ControllerMessage
    ) -> None:
        kind = message.WhichOneof("message")
        with self._lock:
            if kind == "registered":
                interval = message.registered.heartbeat_interval.ToTimedelta().total_seconds()
                stream.heartbeat_interval = interval or DEFAULT_HEARTBEAT_INTERVAL
                stream.registered = True
                logger.info(
                    "registered with the controller %s at %s (heartbeat every %.1fs)",
                    message.registered.controller_id,
                    target,
                    stream.heartbeat_interval,
                )
                self._send_heartbeat()
            elif kind == "assign":
                self._on_assign(message.assign)
            elif kind == "cancel":
                self._on_cancel(message.cancel)
            elif kind == "ack":
                self._on_ack(message.ack)
            elif kind == "drain":
                grace = message.drain.grace.ToTimedelta().total_seconds()
                logger.info("the controller asked the worker to drain")
                self._begin_draining(grace or self._drain_grace)
            else:
                logger.debug("unknown controller message ignored: %s", kind)

    def _on_assign(self, assign: worker_pb2.Assign) -> None:
        attempt_id = assign.attempt_id
        if not attempt_id:
            logger.warning("assignment without an attempt id ignored")
            return
        if attempt_id in self._attempts:
            logger.debug("duplicate assignment of %s ignored", attempt_id)
            return
        attempt = _Attempt(attempt_id=attempt_id)
        self._attempts[attempt_id] = attempt
        if len(self._running()) > self._slots:
            logger.warning("more attempts assigned than slots; running %s anyway", attempt_id)
        kind = assign.WhichOneof("kind")
        if kind == "noop":
            attempt.started_at = _now()
            self._send(_task_started(attempt_id, attempt.started_at))
            self._finish(attempt, types_pb2.ATTEMPT_OUTCOME_SUCCEEDED)
            return
        if kind != "custom":
            self._finish(
                attempt,
                types_pb2.ATTEMPT_OUTCOME_ERROR,
                error=f"this Python SDK worker runs only custom and noop tasks, not `{kind or 'unknown'}` tasks "
                "(it registers without runs_commands and runs_sensors, so a current controller never sends them)",
            )
            return
        handler = self._handlers.get(assign.custom.handler)
        if handler is None:
            self._finish(
                attempt,
                types_pb2.ATTEMPT_OUTCOME_ERROR,
                error=f"handler `{assign.custom.handler}` is not served by this worker",
            )
            return
        try:
            payload = json.loads(assign.custom.payload_json or "null")
            context = TaskContext(assign, attempt, self)
        except ValueError as error:
            self._finish(
                attempt, types_pb2.ATTEMPT_OUTCOME_ERROR, error=f"invalid assignment: {error}"
            )
            return
        if assign.HasField("timeout"):
            attempt.timeout_seconds = assign.timeout.ToTimedelta().total_seconds()
            attempt.deadline = time.monotonic() + attempt.timeout_seconds
        logger.info(
            "running %s/%s attempt %d with handler `%s`",
            assign.run_id,
            assign.task_id,
            assign.attempt,
            assign.custom.handler,
        )
        threading.Thread(
            target=self._run_attempt,
            args=(attempt, handler, payload, context, assign.max_output_bytes),
            name=f"baton-attempt-{attempt_id}",
            daemon=True,
        ).start()

    def _run_attempt(
        self,
        attempt: _Attempt,
        handler: Handler,
        payload: Any,
        context: TaskContext,
        max_output_bytes: int,
    ) -> None:
        with self._lock:
            if attempt.finished:
                return
            attempt.started_at = _now()
            self._send(_task_started(attempt.attempt_id, attempt.started_at))
        try:
            value = handler(payload, context)
        except Exception as error:  # noqa: BLE001 - any handler failure fails the attempt
            context.log(traceback.format_exc())
            message = str(error) or type(error).__name__
            self._finish_locked(
                attempt, types_pb2.ATTEMPT_OUTCOME_FAILED, error=f"{type(error).__name__}: {message}"
            )
            return
        if value is None:
            self._finish_locked(attempt, types_pb2.ATTEMPT_OUTCOME_SUCCEEDED)
            return
        try:
            output_json = json.dumps(value)
        except (TypeError, ValueError) as error:
            self._finish_locked(
                attempt,
                types_pb2.ATTEMPT_OUTCOME_ERROR,
                error=f"the handler returned a value that is not JSON: {error}",
            )
            return
        output_bytes = len(output_json.encode("utf-8"))
        if max_output_bytes and output_bytes > max_output_bytes:
            self._finish_locked(
                attempt,
                types_pb2.ATTEMPT_OUTCOME_ERROR,
                error=f"output is {output_bytes} bytes; the limit is {max_output_bytes}",
            )
            return
        self._finish_locked(attempt, types_pb2.ATTEMPT_OUTCOME_SUCCEEDED, output_json=output_json)

    def _finish_locked(self, attempt: _Attempt, outcome: int, **fields: str) -> None:
        with self._lock:
            if self._attempts.get(attempt.attempt_id) is attempt and not attempt.finished:
                self._finish(attempt, outcome, **fields)

    def _finish(self, attempt: _Attempt, outcome: int, error: str = "", output_json: str = "") -> None:
        """Reports the attempt's result (once) and keeps it until acknowledged."""
        if attempt.finished:
            return
        ended_at = _now()
        result = worker_pb2.TaskResult(
            attempt_id=attempt.attempt_id,
            outcome=outcome,
            error=error,
            output_json=output_json,
            started_at=attempt.started_at or ended_at,
            ended_at=ended_at,
            log_bytes=attempt.log_end,
        )
        attempt.finished = True
        attempt.result = result
        logger.info(
            "attempt %s: %s%s",
            attempt.attempt_id,
            types_pb2.AttemptOutcome.Name(outcome).removeprefix("ATTEMPT_OUTCOME_").lower(),
            f" ({error})" if error else "",
        )
        self._send(worker_pb2.WorkerMessage(task_result=result))

    def _append_log(self, attempt: _Attempt, data: bytes) -> None:
        with self._lock:
            if attempt.finished or self._attempts.get(attempt.attempt_id) is not attempt:
                return
            for start in range(0, len(data), MAX_LOG_CHUNK):
                piece = data[start : start + MAX_LOG_CHUNK]
                attempt.log.append((attempt.log_end, piece))
                self._send(_log_chunk(attempt.attempt_id, attempt.log_end, piece))
                attempt.log_end += len(piece)

    def _on_cancel(self, cancel: worker_pb2.Cancel) -> None:
        attempt = self._attempts.get(cancel.attempt_id)
        if attempt is None or attempt.finished:
            logger.debug("cancel for %s, which is not running here; ignored", cancel.attempt_id)
            return
        reason = f"cancelled: {cancel.reason}" if cancel.reason else "cancelled by the controller"
        attempt.cancel.set()
        self._finish(attempt, types_pb2.ATTEMPT_OUTCOME_CANCELLED, error=reason)

    def _on_ack(self, ack: worker_pb2.Ack) -> None:
        attempt = self._attempts.get(ack.attempt_id)
        if attempt is None:
            return
        if ack.stale:
            logger.info("attempt %s is stale (%s); stopped and forgotten", ack.attempt_id, ack.reason)
            attempt.cancel.set()
            del self._attempts[ack.attempt_id]
            return
        if ack.log_offset > attempt.acked_log_offset:
            attempt.acked_log_offset = min(ack.log_offset, attempt.log_end)
            attempt.log = [
                (offset, data)
                for offset, data in attempt.log
                if offset + len(data) > attempt.acked_log_offset
            ]
        if ack.result_recorded and attempt.finished:
            attempt.result = None
        if attempt.finished and attempt.result is None and attempt.acked_log_offset >= attempt.log_end:
            del self._attempts[ack.attempt_id]


def _now() -> timestamp_pb2.Timestamp:
    timestamp = timestamp_pb2.Timestamp()
    timestamp.GetCurrentTime()
    return timestamp


def _task_started(attempt_id: str, started_at: timestamp_pb2.Timestamp) -> worker_pb2.WorkerMessage:
    return worker_pb2.WorkerMessage(
        task_started=worker_pb2.TaskStarted(attempt_id=attempt_id, started_at=started_at, pid=0)
    )


def _log_chunk(attempt_id: str, offset: int, data: bytes) -> worker_pb2.WorkerMessage:
    return worker_pb2.WorkerMessage(
        log_chunk=worker_pb2.LogChunk(attempt_id=attempt_id, offset=offset, data=data)
    )
