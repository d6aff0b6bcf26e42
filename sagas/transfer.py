"""``transfer``: move money from an account on one ledger to an account on another."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from participants.sdk.strict import Integer
from sagas.catalogue import StepSpec, Uses, saga

ACCOUNT = r"^[A-Za-z0-9._:-]{1,64}$"
PARTICIPANT = r"^[A-Za-z0-9_-]{1,64}$"


class TransferInput(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    from_ledger: str = Field(pattern=PARTICIPANT, description="Participant holding the payer.")
    from_account: str = Field(pattern=ACCOUNT)
    to_ledger: str = Field(pattern=PARTICIPANT, description="Participant holding the payee.")
    to_account: str = Field(pattern=ACCOUNT)
    amount: Integer = Field(gt=0, le=2**62)


ADJUST, UNDO = "/accounts/adjust", "/accounts/adjust/undo"


@saga(
    "transfer",
    TransferInput,
    "Debit one ledger account, then credit another.",
    uses=(Uses(ADJUST, UNDO, field="from_ledger"), Uses(ADJUST, UNDO, field="to_ledger")),
)
def transfer(inp: TransferInput) -> list[StepSpec]:
    return [
        StepSpec(
            "debit",
            inp.from_ledger,
            ADJUST,
            UNDO,
            {"account": inp.from_account, "delta": -inp.amount},
        ),
        StepSpec(
            "credit",
            inp.to_ledger,
            ADJUST,
            UNDO,
            {"account": inp.to_account, "delta": inp.amount},
            after=("debit",),
        ),
    ]
