"""Participant SDK: make a FastAPI service a correct 2PC participant.

sdk = Participant(settings)

@sdk.twopc("/accounts/adjust")
async def adjust(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    ...  # SQL on conn; raise BusinessError("why") to vote no

app = FastAPI(lifespan=sdk.lifespan)
app.include_router(sdk.router)
"""

from participants.sdk.participant import BusinessError, Handler, Participant
from participants.sdk.settings import ParticipantSettings

__all__ = ["BusinessError", "Handler", "Participant", "ParticipantSettings"]
