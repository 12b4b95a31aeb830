"""Composition root of the code location: the only module that imports ``assets`` and ``sensors``.

Each domain module declares its own ``defs``; this module merges them and binds the resources, which read
their configuration from the environment (``eval "$(cqox-platform stack env)"`` for the local stack).
"""

import dagster as dg

from assets import database
from cqox_platform.resources.postgres import PostgresResource
from sensors import database_schedules

defs = dg.Definitions.merge(
    database.defs,
    database_schedules.defs,
    dg.Definitions(resources={"postgres": PostgresResource.from_env()}),
)
