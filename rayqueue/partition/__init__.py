"""One partition at work: its log, group commit, durability, storage writes, replication (no Ray)."""
