"""Leader redirects, against fake controllers on loopback (no Baton needed).

    cd sdk/python && python -m unittest discover -s tests
"""

from __future__ import annotations

import unittest
from concurrent import futures

import grpc

from baton_sdk import BatonError, Client
from baton_sdk._gen.baton.v1 import run_pb2, run_pb2_grpc, types_pb2


class Follower(run_pb2_grpc.RunServiceServicer):
    """Refuses every call, naming `leader` (or no one)."""

    def __init__(self, leader: str | None) -> None:
        self.leader = leader
        self.calls = 0

    def GetRun(self, request, context):  # noqa: N802 - gRPC method name
        self.calls += 1
        if self.leader is not None:
            context.set_trailing_metadata((("baton-leader", self.leader),))
        context.abort(grpc.StatusCode.UNAVAILABLE, "not the leader")


class Leader(run_pb2_grpc.RunServiceServicer):
    def GetRun(self, request, context):  # noqa: N802 - gRPC method name
        return run_pb2.GetRunResponse(
            run=types_pb2.Run(run_id=request.run_id, state=types_pb2.RUN_STATE_SUCCESS)
        )


def serve(servicer: run_pb2_grpc.RunServiceServicer) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    run_pb2_grpc.add_RunServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


class RedirectTest(unittest.TestCase):
    def setUp(self) -> None:
        self.servers: list[grpc.Server] = []

    def tearDown(self) -> None:
        for server in self.servers:
            server.stop(grace=None)

    def start(self, servicer: run_pb2_grpc.RunServiceServicer) -> str:
        server, addr = serve(servicer)
        self.servers.append(server)
        return addr

    def test_follows_the_leader_a_follower_names(self) -> None:
        leader = self.start(Leader())
        follower = Follower(f"http://{leader}")
        with Client(self.start(follower), call_timeout=5) as client:
            view = client.get_run("r1")
        self.assertEqual(view.run_id, "r1")
        self.assertEqual(view.state, "success")
        self.assertEqual(follower.calls, 1)

    def test_gives_up_after_bounded_tries_without_a_leader(self) -> None:
        follower = Follower(None)
        with Client(self.start(follower), call_timeout=5, max_tries=4) as client:
            with self.assertRaises(BatonError) as raised:
                client.get_run("r1")
        self.assertEqual(raised.exception.code, grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(follower.calls, 4)


if __name__ == "__main__":
    unittest.main()
