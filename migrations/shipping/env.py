from migrations.env_common import run
from participants.shipping.schema import metadata

run(metadata)
