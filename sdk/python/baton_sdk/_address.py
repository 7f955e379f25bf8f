"""Controller addresses and leader redirects, shared by the client and the worker.

Addresses are written as the Rust tools write them (`http://127.0.0.1:7070`
or `127.0.0.1:7070`, several separated by commas); grpcio wants `host:port`.
A follower controller refuses leader-only calls with UNAVAILABLE and the
leader's address in the `baton-leader` metadata (absent while no leader is
elected).
"""

from __future__ import annotations

import random

import grpc

LEADER_METADATA_KEY = "baton-leader"

# Largest gRPC message either side accepts, as in the Rust client.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def grpc_target(addr: str) -> str:
    """`http://host:port` or `host:port` as grpcio's `host:port`."""
    addr = addr.strip().rstrip("/")
    if addr.startswith("https://"):
        raise ValueError(f"invalid controller address `{addr}`: TLS is not supported")
    if addr.startswith("http://"):
        addr = addr[len("http://") :]
    if not addr or "://" in addr:
        raise ValueError(f"invalid controller address `{addr}`")
    return addr


def parse_addrs(addrs: str) -> list[str]:
    """Comma-separated addresses as grpcio targets, in order; at least one."""
    targets = [grpc_target(addr) for addr in addrs.split(",") if addr.strip()]
    if not targets:
        raise ValueError("no controller address given")
    return targets


def leader_from_error(error: grpc.RpcError) -> str | None:
    """The leader a follower named when it refused a call, if any."""
    if not isinstance(error, grpc.Call) or error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    metadata = list(error.trailing_metadata() or ()) + list(error.initial_metadata() or ())
    for key, value in metadata:
        if key == LEADER_METADATA_KEY and isinstance(value, str):
            leaders = [addr for addr in value.split(",") if addr.strip()]
            if leaders:
                try:
                    return grpc_target(leaders[0])
                except ValueError:
                    return None
    return None


def jittered(delay: float) -> float:
    """`delay` minus up to a quarter, so that many clients do not retry in step."""
    return delay * (0.75 + random.random() / 4)
