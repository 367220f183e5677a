"""Put-once objects on fsspec storage: segments, delete logs and the catalog."""

from rayqueue.storage.catalog import CatalogStore
from rayqueue.storage.objects import ObjectStore
from rayqueue.storage.partition_store import PartitionStore, RecoveredPartition, partition_prefix, queue_prefix

__all__ = ["CatalogStore", "ObjectStore", "PartitionStore", "RecoveredPartition", "partition_prefix", "queue_prefix"]
