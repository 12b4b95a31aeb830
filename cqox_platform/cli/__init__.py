"""`cqox-platform`: the command line of the platform, one module per command group.

``app`` assembles the groups into the ``main`` click group; ``context`` builds every client the commands use
(core clients from the settings contract, no Dagster); ``group`` holds the error-handling group class.
This ``__init__`` imports nothing, so ``python -m cqox_platform.cli`` reaches ``cqox_platform.entrypoint`` (and
its wal-fetch catch-all) before click or any command module is imported.
"""
