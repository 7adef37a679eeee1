"""A group message onto the pub/sub channel layer from synchronous code: one PUBLISH, no event loop.

channels-redis' `RedisPubSubChannelLayer.group_send` is one PUBLISH of the serialized message to
the group's Redis channel, which every process in the group reads. `GroupWire` sends exactly that
from the calling thread, with a redis-py client kept for its whole life: the layer's own
serializer (format and encryption keys), the layer's channel name for the group and its choice of
shard. A server's `layer.receive` cannot tell it from the layer's own `group_send`
(tests/integration/test_progress_publisher.py receives one through the real layer).

Why: a job used to hand each event to a publisher thread running an event loop for the layer.
Measured on this machine (README, Benchmarks), the thread hand-off and the layer's asyncio publish
were 1.5 to 4 ms of the 4 ms from a part's commit to its subscriber; a PUBLISH from the committing
thread is a tenth of a millisecond.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.sentinel
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.utils import _consistent_hash, decode_hosts
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

# A progress event must never hold a transfer up for long: no retries, short timeouts (an event
# lost is re-read by the subscriber's hub within PROGRESS_RESYNC_SECONDS).
SOCKET_TIMEOUT_SECONDS = 1.0


class GroupWire:
    """`group_send` of the default pub/sub layer, synchronously. Thread-safe; `send` raises what redis-py raises."""

    def __init__(self, layer: RedisPubSubChannelLayer, config: dict[str, Any]) -> None:
        self._serialize = layer.serialize
        # RedisPubSubLoopLayer's `prefix` (default "asgi") and its group channel naming.
        self._prefix = config.get("prefix", "asgi")
        self._shards = [_client(host) for host in decode_hosts(config.get("hosts"))]

    @classmethod
    def for_layer(cls, layer: Any, alias: str = "default") -> GroupWire | None:
        """The wire for `layer` (settings.CHANNEL_LAYERS[alias]); None for a layer of another kind."""
        if not isinstance(layer, RedisPubSubChannelLayer):
            return None
        layers: dict[str, dict[str, Any]] = settings.CHANNEL_LAYERS
        return cls(layer, layers[alias].get("CONFIG", {}))

    def group_channel(self, group: str) -> str:
        return f"{self._prefix}__group__{group}"

    def send(self, group: str, message: dict[str, Any]) -> None:
        channel = self.group_channel(group)
        shard = self._shards[_consistent_hash(channel, len(self._shards))]
        shard.publish(channel, self._serialize(message))

    def close(self) -> None:
        for shard in self._shards:
            shard.close()


def _client(host: dict[str, Any]) -> redis.Redis:
    """A synchronous client for one entry of the layer's `hosts` (as `channels_redis.utils.create_pool` reads it)."""
    options = dict(host)
    limits: dict[str, Any] = {
        "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "retry": Retry(NoBackoff(), 0),
    }
    if "address" in options:
        return redis.Redis.from_url(options.pop("address"), **options, **limits)
    master_name = options.pop("master_name", None)
    if master_name is not None:
        sentinel = redis.sentinel.Sentinel(
            options.pop("sentinels"), sentinel_kwargs=options.pop("sentinel_kwargs", None)
        )
        return sentinel.master_for(master_name, **options, **limits)
    return redis.Redis(**options, **limits)
