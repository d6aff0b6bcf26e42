from migrations.env_common import run
from participants.inventory.schema import metadata

run(metadata)
