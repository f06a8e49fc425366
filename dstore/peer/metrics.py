"""Prometheus metrics of one peer, in a registry of its own (never the process-global one),
so several apps in one process (tests) do not collide."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "PeerMetrics"]

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class PeerMetrics:
    def __init__(
        self,
        bytes_stored: Callable[[], float],
        shards: Callable[[], float],
        capacity_bytes: int | None,
        bytes_reserved: Callable[[], float] = lambda: 0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "dstore_peer_requests",
            "HTTP requests answered, by method, route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "dstore_peer_request_duration_seconds",
            "Time from receiving a request to sending its response headers",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.bytes_in = Counter("dstore_peer_received_bytes", "Request body bytes received in uploads", registry=r)
        self.bytes_out = Counter("dstore_peer_sent_bytes", "Response body bytes sent", registry=r)
        Gauge("dstore_peer_stored_bytes", "Bytes of blocks held", registry=r).set_function(bytes_stored)
        Gauge("dstore_peer_shards", "Blocks held", registry=r).set_function(shards)
        Gauge("dstore_peer_reserved_bytes", "Capacity booked by uploads being written", registry=r).set_function(
            bytes_reserved
        )
        self.connections_open = Gauge("dstore_peer_connections", "Open client connections", registry=r)
        self.connections_closed = Counter(
            "dstore_peer_connections_closed",
            "Connections the peer closed: header_timeout, keepalive_timeout, evicted (to make room), rejected",
            ["reason"],
            registry=r,
        )
        if capacity_bytes is not None:
            Gauge("dstore_peer_capacity_bytes", "Configured capacity (absent when unlimited)", registry=r).set(
                capacity_bytes
            )
        self.scrub_checked = Counter("dstore_peer_scrub_checked", "Blocks re-hashed by scrub", registry=r)
        self.scrub_checked_bytes = Counter("dstore_peer_scrub_checked_bytes", "Bytes re-hashed by scrub", registry=r)
        self.scrub_bad = Counter(
            "dstore_peer_scrub_bad", "Blocks that failed their CID during scrub and were dropped", registry=r
        )
        self.scrub_passes = Counter("dstore_peer_scrub_passes", "Completed scrub passes", registry=r)
        self.scrub_last_finished = Gauge(
            "dstore_peer_scrub_last_finished_timestamp_seconds", "When the last scrub pass finished", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
