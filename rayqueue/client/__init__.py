"""The user's side: ``connect``, ``Client`` (queues), ``Queue`` (messages), the
buffered consumer, and turning user values into Arrow rows. Nothing here imports the
partition's, the control plane's or the storage's logic; shared types live in
``rayqueue.routes``, ``rayqueue.schemas`` and ``rayqueue.message``.
"""
