"""One partition's log: offsets, visibility, receipts and deletes. No Ray, no I/O."""

from rayqueue.log.partition_log import DELIVERY_SCHEMA, DeleteTicket, LogStats, PartitionLog

__all__ = ["DELIVERY_SCHEMA", "DeleteTicket", "LogStats", "PartitionLog"]
