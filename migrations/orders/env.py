from migrations.env_common import run
from participants.orders.schema import metadata

run(metadata)
