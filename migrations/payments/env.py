from migrations.env_common import run
from participants.payments.schema import metadata

run(metadata)
