"""Participant SDK: make a FastAPI service a correct 2PC, saga and TCC participant.

sdk = Participant(settings)

@sdk.twopc("/accounts/adjust")  # Txn-Op: prepare
@sdk.action("/accounts/adjust")  # Txn-Op: action (a saga step)
async def adjust(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    ...  # SQL on conn; raise BusinessError("why") to vote no / refuse the step

@sdk.compensation("/accounts/adjust/undo")  # Txn-Op: compensate
async def undo(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    ...

@sdk.tcc_try("/tcc/adjust", confirm="/tcc/adjust/confirm", cancel="/tcc/adjust/cancel")
async def hold(conn, payload): ...  # Txn-Op: try (reserve, commit; BusinessError refuses)

@sdk.tcc_confirm("/tcc/adjust/confirm")
async def spend(conn, payload): ...  # Txn-Op: confirm (use the reservation)

@sdk.tcc_cancel("/tcc/adjust/cancel")
async def release(conn, payload): ...  # Txn-Op: cancel (release it)

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
