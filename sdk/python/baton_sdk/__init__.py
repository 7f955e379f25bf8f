"""Baton's Python SDK: a worker that serves custom task handlers, and a client.

    from baton_sdk import Client, Worker

The gRPC stubs in `baton_sdk._gen` are generated from the repository's
`proto/` by `generate.py` (see the README); they are not committed.

Layout:
- `client`: `Client` (register DAGs, trigger runs, wait for them), `RunView`,
  `BatonError`.
- `worker`: `Worker` (the `WorkerService.Connect` protocol, handlers run in
  threads) and `TaskContext`, what a handler gets besides its payload.
- `_address`: controller addresses and leader redirects, shared by both.
- `_gen`: the generated protobuf and gRPC modules.
"""

__version__ = "0.1.0"

from baton_sdk.client import BatonError, Client, RegisteredDag, RunView  # noqa: E402
from baton_sdk.worker import TaskContext, Worker  # noqa: E402

__all__ = [
    "BatonError",
    "Client",
    "RegisteredDag",
    "RunView",
    "TaskContext",
    "Worker",
    "__version__",
]
