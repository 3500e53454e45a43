"""The event exchange: publish, forward and subscribe, as containerd's `exchange`."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

from google.protobuf import any_pb2

from .. import filters, identifiers, stubs
from ..errdefs import q, InvalidArgument
from ..grpcutil import set_timestamp

events_pb2 = stubs.module("appliance._proto.containerd.api.services.events.v1.events_pb2")

log = logging.getLogger("appliance.events")
QUEUE_LIMIT = 4096


def pack_any(message) -> any_pb2.Any:
    """An Any with the bare full name as type_url, as containerd's typeurl expects."""
    return any_pb2.Any(type_url=message.DESCRIPTOR.full_name,
                       value=message.SerializeToString())


def validate_topic(topic: str) -> None:
    """containerd's checks and words (`envelope topic "…": …`)."""
    if not topic:
        why = "must not be empty: invalid argument"
    elif not topic.startswith("/"):
        why = "must start with '/': invalid argument"
    elif len(topic) == 1:
        why = "must have at least one component: invalid argument"
    else:
        for part in topic[1:].split("/"):
            try:
                identifiers.validate(part)
            except InvalidArgument as exc:
                raise InvalidArgument(f"envelope topic {q(topic)}: failed validation on "
                                      f"component {q(part)}: {exc.message}") from None
        return
    raise InvalidArgument(f"envelope topic {q(topic)}: {why}")


class _Subscriber:
    def __init__(self, loop, matcher):
        self.loop = loop
        self.matcher = matcher
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE_LIMIT)
        self.overflowed = False

    def offer(self, envelope) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(envelope)
        except asyncio.QueueFull:
            self.overflowed = True  # a subscriber this slow is disconnected


class Exchange:
    """Fans envelopes out to subscribers; safe to call from any thread."""

    def __init__(self):
        self._subscribers: set[_Subscriber] = set()
        self._lock = threading.Lock()
        # (namespace, topic) pairs that passed validation: a few dozen per node, each
        # event otherwise runs the identifier regex on every part again
        self._valid: set[tuple[str, str]] = set()

    def _validate(self, namespace: str, topic: str) -> None:
        if (namespace, topic) in self._valid:
            return
        try:
            identifiers.validate(namespace)
        except InvalidArgument as exc:
            raise InvalidArgument(f"event envelope has invalid namespace: {exc.message}") \
                from None
        validate_topic(topic)
        if len(self._valid) >= 1024:
            self._valid.clear()
        self._valid.add((namespace, topic))

    def publish(self, namespace: str, topic: str, event) -> None:
        if (namespace, topic) not in self._valid:
            identifiers.validate(namespace)   # (in-process callers: the bare message)
            self._validate(namespace, topic)
        envelope = events_pb2.Envelope(namespace=namespace, topic=topic, event=pack_any(event))
        set_timestamp(envelope.timestamp, time.time_ns())   # (GetCurrentTime: via datetime)
        self._broadcast(envelope)

    def forward(self, envelope) -> None:
        self._validate(envelope.namespace, envelope.topic)
        if not envelope.HasField("timestamp"):
            raise InvalidArgument("timestamp must be set on forwarded event: invalid argument")
        self._broadcast(envelope)

    def _broadcast(self, envelope) -> None:
        log.debug("event %s %s", envelope.namespace, envelope.topic)
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            if not sub.matcher(envelope):
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is sub.loop:
                sub.offer(envelope)
            elif not sub.loop.is_closed():
                sub.loop.call_soon_threadsafe(sub.offer, envelope)

    async def subscribe(self, *filter_strings):
        """Yield matching envelopes until the caller stops iterating."""
        flt = filters.parse(*filter_strings)
        # an envelope's filter fields are its namespace and topic only (_envelope_field):
        # the answer for a pair is remembered (a node has a few dozen pairs)
        answers: dict[tuple[str, str], bool] = {}

        def matcher(env):
            key = (env.namespace, env.topic)
            found = answers.get(key)
            if found is None:
                found = flt.match(lambda path: _envelope_field(env, path))
                if len(answers) >= 1024:
                    answers.clear()
                answers[key] = found
            return found

        sub = _Subscriber(asyncio.get_running_loop(), matcher)
        with self._lock:
            self._subscribers.add(sub)
        try:
            while True:
                envelope = await sub.queue.get()
                yield envelope
                if sub.overflowed and sub.queue.empty():
                    log.warning("event subscriber too slow: dropped")
                    return
        finally:
            with self._lock:
                self._subscribers.discard(sub)


def _envelope_field(env, path):
    if not path:
        return "", False
    if path[0] == "topic":
        return env.topic, len(path) == 1
    if path[0] == "namespace":
        return env.namespace, len(path) == 1
    return "", False
