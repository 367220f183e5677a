"""The control plane: the catalog of queues, placements, failover, and the scaling policy (no Ray)."""
