"""Participant SDK: make a FastAPI service a correct 2PC and saga participant.

sdk = Participant(settings)

@sdk.twopc("/accounts/adjust")  # Txn-Op: prepare
@sdk.action("/accounts/adjust")  # Txn-Op: action (a saga step)
async def adjust(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    ...  # SQL on conn; raise BusinessError("why") to vote no / refuse the step

@sdk.compensation("/accounts/adjust/undo")  # Txn-Op: compensate
async def undo(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    ...

app = FastAPI(lifespan=sdk.lifespan)
sdk.mount(app)  # the routes, and the ASGI fast path that answers them first
"""

from participants.sdk.base import BarrierHook, BusinessError, Handler, current_branch
from participants.sdk.participant import Participant
from participants.sdk.settings import ParticipantSettings

__all__ = [
    "BarrierHook",
    "BusinessError",
    "Handler",
    "Participant",
    "ParticipantSettings",
    "current_branch",
]
