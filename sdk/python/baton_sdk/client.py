"""`Client`: register DAGs, trigger runs and wait for them over grpcio."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from baton_sdk._address import CHANNEL_OPTIONS, jittered, leader_from_error, parse_addrs
from baton_sdk._gen.baton.v1 import (
    dag_pb2,
    dag_pb2_grpc,
    run_pb2,
    run_pb2_grpc,
    types_pb2,
)

# Redirects to a named leader followed at once, one after the other; two
# controllers that disagree about the leader cannot make the client spin.
MAX_REDIRECTS_IN_A_ROW = 3
# Tries of one call in all (redirects included) before its error is raised,
# by default.
MAX_TRIES = 10
# Delay before retrying when no leader is known; doubles up to MAX_BACKOFF.
INITIAL_BACKOFF = 0.1
MAX_BACKOFF = 2.0
# How often `wait_for_run` asks for the run.
POLL_INTERVAL = 0.2

FINAL_RUN_STATES = {
    types_pb2.RUN_STATE_SUCCESS,
    types_pb2.RUN_STATE_FAILED,
    types_pb2.RUN_STATE_CANCELLED,
}


class BatonError(Exception):
    """A call the controller refused, or that could not reach a leader."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class RegisteredDag:
    dag_id: str
    version: int
    # False when the same spec was already registered (nothing was stored).
    created: bool


@dataclass(frozen=True)
class RunView:
    """A run and the state of each of its tasks, as `GetRun` returned them."""

    run: types_pb2.Run
    tasks: list[types_pb2.TaskInstance]

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def state(self) -> str:
        """`queued`, `running`, `success`, `failed` or `cancelled`."""
        return _state_name(types_pb2.RunState.Name(self.run.state), "RUN_STATE_")

    @property
    def finished(self) -> bool:
        return self.run.state in FINAL_RUN_STATES

    def task(self, task_id: str) -> types_pb2.TaskInstance:
        for task in self.tasks:
            if task.task_id == task_id:
                return task
        raise KeyError(f"run {self.run_id} has no task `{task_id}`")

    def task_state(self, task_id: str) -> str:
        """`pending`, `ready`, `running`, `success`, `failed`, ..."""
        return _state_name(types_pb2.TaskState.Name(self.task(task_id).state), "TASK_STATE_")

    def output(self, task_id: str) -> Any:
        """The JSON value the task's last successful attempt returned (None if none)."""
        output_json = self.task(task_id).output_json
        return json.loads(output_json) if output_json else None


def _state_name(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


class Client:
    """A client of the Baton API.

    `addr` is one controller address or several separated by commas
    (`http://` optional); any replica will do: calls a follower refuses are
    resent to the leader it names, and UNAVAILABLE is retried with backoff,
    `max_tries` tries per call in all. Every call has a deadline of
    `call_timeout` seconds. Not thread-safe; use one client per thread.
    """

    def __init__(
        self, addr: str, *, call_timeout: float = 10.0, max_tries: int = MAX_TRIES
    ) -> None:
        if max_tries < 1:
            raise ValueError("max_tries must be at least 1")
        self._max_tries = max_tries
        self._targets = parse_addrs(addr)
        self._target = self._targets[0]
        self._call_timeout = call_timeout
        self._channel: grpc.Channel | None = None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def register_dag(self, spec: str | Mapping[str, Any]) -> RegisteredDag:
        """Registers a DAG document: YAML or JSON text, or a dict (sent as JSON)."""
        if isinstance(spec, str):
            request = dag_pb2.RegisterDagRequest(spec=spec)
        else:
            request = dag_pb2.RegisterDagRequest(
                spec=json.dumps(spec), format=types_pb2.SPEC_FORMAT_JSON
            )
        response = self._call(dag_pb2_grpc.DagServiceStub, "RegisterDag", request)
        return RegisteredDag(response.dag.dag_id, response.version, response.created)

    def trigger_run(
        self,
        dag_id: str,
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str = "",
    ) -> str:
        """Creates a run of the DAG's latest version; returns its run id."""
        request = run_pb2.TriggerRunRequest(
            dag_id=dag_id,
            params_json=json.dumps(dict(params or {})),
            idempotency_key=idempotency_key,
        )
        return self._call(run_pb2_grpc.RunServiceStub, "TriggerRun", request).run.run_id

    def get_run(self, run_id: str) -> RunView:
        request = run_pb2.GetRunRequest(run_id=run_id, include_tasks=True)
        response = self._call(run_pb2_grpc.RunServiceStub, "GetRun", request)
        return RunView(response.run, list(response.tasks))

    def wait_for_run(self, run_id: str, timeout: float) -> RunView:
        """Polls the run until it is finished; raises TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / POLL_INTERVAL) + 2):
            view = self.get_run(run_id)
            if view.finished:
                return view
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(POLL_INTERVAL, remaining))
        raise TimeoutError(
            f"run {run_id} did not finish within {timeout}s "
            f"(state {view.state}, tasks {dict(view.run.task_counts)})"
        )

    def _call(self, stub_class: Any, method: str, request: Any) -> Any:
        """One unary call, following leader redirects and retrying (bounded)
        while the controllers answer UNAVAILABLE."""
        backoff = INITIAL_BACKOFF
        redirects_in_a_row = 0
        for attempt in range(1, self._max_tries + 1):
            if self._channel is None:
                self._channel = grpc.insecure_channel(self._target, options=CHANNEL_OPTIONS)
            rpc = getattr(stub_class(self._channel), method)
            try:
                return rpc(request, timeout=self._call_timeout)
            except grpc.RpcError as error:
                if not isinstance(error, grpc.Call):
                    raise
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == self._max_tries:
                    raise BatonError(method, error.code(), error.details() or "") from None
                leader = leader_from_error(error)
                self.close()
                if leader is not None and leader != self._target:
                    self._target = leader
                    if redirects_in_a_row < MAX_REDIRECTS_IN_A_ROW:
                        redirects_in_a_row += 1
                        continue
                elif leader is None:
                    # No leader known here: try the next configured address.
                    index = self._targets.index(self._target) if self._target in self._targets else -1
                    self._target = self._targets[(index + 1) % len(self._targets)]
                redirects_in_a_row = 0
                time.sleep(jittered(backoff))
                backoff = min(backoff * 2, MAX_BACKOFF)
        raise AssertionError("unreachable: the last try raises")
