"""Example Baton worker in Python serving three custom task handlers.

    python examples/worker.py --addr 127.0.0.1:7070 --id py-worker

A DAG task reaches it with `kind: custom` and one of the handlers below:

    - id: sum
      kind: custom
      handler: add
      payload: {numbers: [1, 2, 3]}
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from baton_sdk import TaskContext, Worker


def add(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Sums `payload.numbers`."""
    numbers = payload["numbers"]
    context.log(f"adding {numbers}")
    return {"sum": sum(numbers)}


def greet(payload: dict[str, Any] | None, context: TaskContext) -> dict[str, Any]:
    """Greets `payload.name`, or the run parameter `name`, `payload.times` times,
    pausing `payload.pause` seconds between greetings (stops early when cancelled)."""
    payload = payload or {}
    name = payload.get("name") or context.params.get("name", "world")
    greetings = []
    for _ in range(int(payload.get("times", 1))):
        greetings.append(f"Hello, {name}!")
        context.log(greetings[-1])
        if context.wait_cancelled(float(payload.get("pause", 0))):
            break
    return {"greeting": " ".join(greetings), "attempt": context.attempt}


def divide(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Divides `payload.a` by `payload.b`; a zero `b` raises, which fails the task."""
    context.log(f"dividing {payload['a']} by {payload['b']}")
    return {"quotient": payload["a"] / payload["b"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:7070", help="controller address(es), comma-separated")
    parser.add_argument("--id", dest="worker_id", help="worker id (a new UUID by default)")
    parser.add_argument("--queue", action="append", dest="queues", help="queue to serve (repeatable)")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--drain-grace", type=float, default=30.0, help="seconds")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.Formatter.converter = time.gmtime
    worker = Worker(
        args.addr,
        args.worker_id,
        handlers={"add": add, "greet": greet, "divide": divide},
        queues=args.queues or ["default"],
        slots=args.slots,
        drain_grace=args.drain_grace,
    )
    worker.run()


if __name__ == "__main__":
    main()
