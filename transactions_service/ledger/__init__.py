"""The money: the ledger's tables, its statements, its rules, who may do what, and idempotency.

``rules`` is what the views, the command line and the jobs call; it asks
``policy`` before writing, runs every statement through ``store``, and leaves
keyed writes to ``idempotency``. Nothing here speaks HTTP.
"""
