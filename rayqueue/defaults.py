"""Named defaults and hard limits, in one place.

Limits follow Amazon SQS where a user would compare (names, visibility,
retention, attributes) and are larger where rayqueue is meant to move bulk data
(batch sizes, message size).
"""

from __future__ import annotations

import os

#: Ray namespace that holds the coordinator and the partition actors.
NAMESPACE = "rayqueue"
#: Name of the detached coordinator actor inside the namespace.
COORDINATOR_NAME = "rayqueue-coordinator"
#: Storage used when connect() is given none and no coordinator runs yet.
STORAGE = os.environ.get("RAYQUEUE_STORAGE") or "file://" + os.path.expanduser("~/.rayqueue/storage")

#: Longest queue name, as in SQS.
MAX_NAME_LENGTH = 80
#: Largest max_messages a queue may ask for.
MAX_QUEUE_MESSAGES = 10_000_000_000
#: Largest max_message_bytes a queue may ask for (SQS stops at 1 MiB).
MAX_MESSAGE_BYTES_LIMIT = 16 * 1024 * 1024
#: Most partitions one queue may have.
MAX_PARTITIONS = 256
#: Sends per second one partition may be told to carry (target_send_rate): the scaling
#: policy divides by it, so a tiny value overflows and an infinite one is no target.
MIN_TARGET_SEND_RATE = 1e-3
MAX_TARGET_SEND_RATE = 1e9
#: Ray counts resources in ten-thousandths: it refuses a non-zero request below this
#: (and rounds others), so partition_num_cpus and partition_resources are multiples of it.
RESOURCE_UNIT = 0.0001
#: Largest partition_resources quantity: Ray keeps quantities as 64-bit counts of
#: RESOURCE_UNIT, and a value near that overflows in Ray after the queue is created.
MAX_RESOURCE_QUANTITY = 1e12
#: Resources that partition_resources may not name: Ray takes CPUs, GPUs and memory only
#: through their own options (partition_num_cpus sets the CPUs), never as custom resources.
RESERVED_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
#: Message data a partition keeps in memory by default, and at least; a larger
#: backlog stays on storage and is read back a segment at a time.
PARTITION_MEMORY_BYTES = 256 * 1024 * 1024
MIN_PARTITION_MEMORY_BYTES = 1024 * 1024
#: Scaling: the load one partition is meant to carry, the history a decision looks
#: at, and the pause after each change (see rayqueue.control.autoscale).
TARGET_SEND_RATE = 5_000.0
TARGET_BACKLOG = 100_000
SCALING_WINDOW_S = 30.0
SCALING_COOLDOWN_S = 60.0
#: How long a handle uses a route before asking the coordinator for a fresh one,
#: and so how long a retired partition waits for stale handles before it goes.
ROUTE_TTL_S = 2.0
#: Host actors that partitions of queues with hosting="shared" live in (per namespace).
SHARED_HOSTS = 4
#: Most replica actors per partition.
MAX_REPLICAS = 4
#: Visibility timeout: default and upper bound, as in SQS.
VISIBILITY_TIMEOUT_S = 30.0
MAX_VISIBILITY_TIMEOUT_S = 12 * 3600.0
#: Retention: default four days, from one minute to fourteen days, as in SQS.
RETENTION_S = 4 * 24 * 3600.0
MIN_RETENTION_S = 60.0
MAX_RETENTION_S = 14 * 24 * 3600.0
#: Longest long poll of one receive call (SQS allows 20 s).
MAX_WAIT_S = 20.0
#: Longest refresh interval of ``rayqueue top``: a live view wants seconds, and
#: ``time.sleep`` refuses values past about 9e9 s with a raw OverflowError.
MAX_TOP_INTERVAL_S = 3600.0

#: Most messages in one send_batch, receive or delete_batch call.
MAX_BATCH_MESSAGES = 10_000
#: Most body bytes in one send_batch call.
MAX_BATCH_BYTES = 64 * 1024 * 1024
#: Attributes per message, as in SQS, and the longest key and value.
MAX_ATTRIBUTES = 10
MAX_ATTRIBUTE_KEY_LENGTH = 256
MAX_ATTRIBUTE_VALUE_LENGTH = 4096
#: Longest ordering key and explicit message id.
MAX_KEY_LENGTH = 256
MAX_MESSAGE_ID_LENGTH = 128
#: Most messages one read_dataset may ask for: far past any queue's MAX_QUEUE_MESSAGES
#: (messages that come back may be read again), and small enough that the readers'
#: shares, worked out in floats, stay exact (below 2**53).
MAX_READ_MESSAGES = 1_000_000_000_000

#: How long an explicit message_id makes a repeated send a no-op (SQS: 5 minutes).
DEDUP_WINDOW_S = 300.0

#: Storage calls are retried with exponential backoff for this long before the
#: error reaches the caller as StorageUnavailable.
STORAGE_RETRY_S = 10.0
STORAGE_RETRY_FIRST_DELAY_S = 0.05

#: A handle retries a partition that is restarting for this long before it
#: raises PartitionUnavailable (a Ray actor restart takes about 0.65 s here).
PARTITION_RETRY_S = 30.0

# ---- how long calls wait, and how often things are retried or repeated
#: How long a probe waits for an actor before calling it slow (not dead).
PROBE_TIMEOUT_S = 2.0
#: How long a new actor may take to start.
START_TIMEOUT_S = 60.0
#: How long ``start(wait=True)`` waits for leaders to catch new replicas up. Only a
#: new queue waits (it has nothing to catch up), so this is short; past it the
#: replicas join in the background.
ATTACH_TIMEOUT_S = 10.0
#: How long a promotion may take (it reads the partition's state from storage).
PROMOTE_TIMEOUT_S = 120.0
#: How long a parked reply waits to be fetched.
PARKED_FOR_S = 60.0
#: How long a fenced leader's process lives on, so that its last replies go out.
EXIT_AFTER_FENCE_S = 0.5
#: Times a catalog change is re-applied after losing a race to another writer.
CATALOG_ATTEMPTS = 5
#: Times ``route`` starts a queue's partitions when a leader vanishes in between
#: (the next attempt fails that partition over instead of re-creating its leader).
ROUTE_ATTEMPTS = 2
#: How often the coordinator looks for storage prefixes that no queue owns.
ORPHAN_SWEEP_INTERVAL_S = 3600.0
#: Body bytes one group commit writes at most (one segment object).
MAX_SEGMENT_BYTES = 64 * 1024 * 1024
#: Gauges of visible and in-flight messages are refreshed at most this often.
STATE_REPORT_INTERVAL_S = 1.0
#: A write slower than this is logged: a leader that cannot store holds everything in memory.
SLOW_WRITE_S = 5.0
#: A call that takes longer than its own wait plus this is treated as lost.
CALL_TIMEOUT_S = 60.0
#: Retries back off from the first delay, doubling up to the last: partition and
#: coordinator calls, storage calls, reports to the coordinator, and writes a leader
#: already acknowledged (which it must store whatever storage does).
CALL_BACKOFF_S = (0.05, 0.8)
STORAGE_BACKOFF_S = (STORAGE_RETRY_FIRST_DELAY_S, 1.0)
REPORT_BACKOFF_S = (0.1, 2.0)
STORE_BACKOFF_S = (0.1, 5.0)

#: A partition checkpoints after this many delete logs and emptied segments,
#: which bounds what its recovery reads.
CHECKPOINT_EVERY = 64

#: How often the coordinator checks that partition leaders and replicas are alive.
HEALTH_CHECK_INTERVAL_S = 1.0
#: A partition call that may carry this many bytes or more, either way, goes through Ray
#: instead of the direct channel: Ray's object store moves large buffers faster (a 64 MiB
#: batch took 83 ms over the socket; ``jobs/bench.py`` at 64 KiB shows the difference).
BULKY_CALL_BYTES = 8 * 1024 * 1024
#: After a partition's socket could not be reached although Ray says the actor lives (a
#: firewall that opens only Ray's ports), its calls go through Ray this long, then the
#: socket is tried again.
RAY_FALLBACK_S = 60.0
#: How long a leader waits for a replica to take a batch before dropping it from the in-sync set.
REPLICA_TIMEOUT_S = 5.0
#: With durability "replicas", how many writes may wait to be stored while their
#: acknowledgement rests on the replicas alone. Past it, a write is acknowledged once
#: stored, as with durability "storage", so that producers slow to what storage takes:
#: what a double failure can lose, what a new replica must copy, and what a promoted
#: replica must store before it serves stay this small. (A chaos run on S3 without
#: the bound saw a promoted replica holding 1,697 unstored segments.)
MAX_UNSTORED_WRITES = 8

#: Segments a takeover reads from storage at once. It reads every segment still in the
#: dedup window: a chaos run on S3 saw 882 of them, and a 39 s failover, one at a time.
RECOVERY_READ_AHEAD = 8

#: Catalog versions kept on storage besides the newest (older ones are removed).
CATALOG_VERSIONS_KEPT = 3

#: How long connect() and the CLI wait for a Ray address to answer before saying
#: that nothing does (Ray itself retries a dead address for minutes).
RAY_CONNECT_TIMEOUT_S = 3.0
#: Ray's authentication mode for a Ray that rayqueue starts or finds itself when
#: RAY_AUTH_MODE is unset: Ray's own default, chosen explicitly (so Ray prints no warning).
RAY_AUTH_MODE = "token"
#: How long the storage check before a coordinator starts retries errors that may pass.
STORAGE_CHECK_S = 3.0

# ------------------------------------------------------------ the direct channel
# (rayqueue.transport.wire: the socket that carries data calls beside Ray)

#: The channel's protocol, in every hello and frame header. Bump it on any change to
#: the handshake, the header or what the frames may carry: detached partitions outlive
#: drivers, so two versions of rayqueue meet, and must fail with a named error.
WIRE_PROTOCOL_VERSION = 2
#: Seconds a new connection has to complete TLS and the hello before the server
#: drops it: an honest client needs one round trip, and a short bound frees a
#: slot taken by a silent or hostile peer.
HELLO_TIMEOUT_S = 2.0
#: Seconds a client gives connect, TLS and the hello together: a firewall that drops
#: packets must fail within seconds, so the call falls back to Ray instead of
#: waiting for the call's own timeout (a minute or more).
CONNECT_TIMEOUT_S = 3.0
#: Connections a server holds that have not authenticated yet; more are closed at once,
#: so a flood cannot use up the partition's file descriptors (storage needs them too).
MAX_UNAUTHENTICATED_CONNECTIONS = 256
#: Most bytes one frame may carry (pickle and out-of-band buffers together). A reply that
#: is a slice of a segment pickles the segment's whole buffers, so honest frames reach
#: hundreds of megabytes; a larger header is corrupt or hostile, and refused before
#: anything is allocated for it.
MAX_FRAME_BYTES = 1024 * 1024 * 1024
#: Most out-of-band buffers in one frame (a table sends a few per column and chunk;
#: a receive that spans a hundred segments sends a few thousand).
MAX_FRAME_BUFFERS = 16 * 1024
#: Seconds of silence before a client probes whether the server's host is still there.
KEEPALIVE_IDLE_S = 2
