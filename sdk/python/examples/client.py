"""Example Baton client in Python: registers a DAG of custom tasks (one depending
on the other), triggers a run, waits for it and prints each task's output.

    python examples/client.py --addr 127.0.0.1:7070 --name Ada

Needs a worker serving the `add` and `greet` handlers (examples/worker.py).
Prints `run <run_id> <state>`, then `<task_id> <output as JSON>` per task;
exits 1 when the run did not succeed.
"""

from __future__ import annotations

import argparse
import json
import sys

from baton_sdk import Client

DAG = {
    "id": "python-sdk-example",
    "description": "Custom tasks served by the Python SDK's example worker",
    "tasks": [
        {
            "id": "sum",
            "kind": "custom",
            "handler": "add",
            "payload": {"numbers": [1, 2, 3, 4]},
        },
        {
            "id": "hello",
            "kind": "custom",
            "handler": "greet",
            "payload": {"times": 2},
            "depends_on": ["sum"],
        },
    ],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:7070", help="controller address(es), comma-separated")
    parser.add_argument("--name", default="world", help="the run parameter `name`")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the run")
    args = parser.parse_args()
    with Client(args.addr) as client:
        registered = client.register_dag(DAG)
        run_id = client.trigger_run(registered.dag_id, params={"name": args.name})
        run = client.wait_for_run(run_id, timeout=args.timeout)
    print(f"run {run.run_id} {run.state}")
    for task in run.tasks:
        print(f"{task.task_id} {json.dumps(run.output(task.task_id), sort_keys=True)}")
    return 0 if run.state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
