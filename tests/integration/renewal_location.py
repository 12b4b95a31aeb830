"""The code location the secret-id renewal test's own dagster-daemon loads: vault_config with its job, schedule
and asset check, and secret_id_renewal_sensor; resources built from the settings as ``cqox_platform.definitions``
builds them. Only these, so the daemon starts nothing else on the session's stack (no backup automation, no
canary sensor racing other tests)."""

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets import security
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.vault import VaultResource
from cqox_platform.settings import get_settings
from sensors import vault_sensor

settings = get_settings()
vault = VaultResource.from_settings(settings)

defs = dg.Definitions.merge(
    security.defs,
    vault_sensor.defs,
    dg.Definitions(
        resources={
            "postgres": PostgresResource.from_settings(settings, vault=vault),
            "postgres_admin": PostgresResource.from_settings(settings),
            "vault": vault,
            "vault_admin": VaultResource.from_settings(settings, admin=True),
            "s3": S3Resource(endpoint_url=settings.s3_endpoint, region_name="us-east-1"),
        }
    ),
)
