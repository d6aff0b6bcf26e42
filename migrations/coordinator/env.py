from coordinator.schema import metadata
from migrations.env_common import run

run(metadata)
