from migrations.env_common import run
from participants.ledger.schema import metadata

run(metadata)
