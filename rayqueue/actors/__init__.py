"""The only code that imports Ray: actor shells, the call boundary, and joining a cluster."""
