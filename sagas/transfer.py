"""``transfer``: move money from an account on one ledger to an account on another."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from sagas.catalogue import StepSpec, saga

ACCOUNT = r"^[A-Za-z0-9._:-]{1,64}$"
PARTICIPANT = r"^[A-Za-z0-9_-]{1,64}$"


class TransferInput(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    from_ledger: str = Field(pattern=PARTICIPANT, description="Participant holding the payer.")
    from_account: str = Field(pattern=ACCOUNT)
    to_ledger: str = Field(pattern=PARTICIPANT, description="Participant holding the payee.")
    to_account: str = Field(pattern=ACCOUNT)
    amount: int = Field(gt=0, le=2**62)


@saga("transfer", TransferInput, "Debit one ledger account, then credit another.")
def transfer(inp: TransferInput) -> list[StepSpec]:
    return [
        StepSpec(
            "debit",
            inp.from_ledger,
            "/accounts/adjust",
            "/accounts/adjust/undo",
            {"account": inp.from_account, "delta": -inp.amount},
        ),
        StepSpec(
            "credit",
            inp.to_ledger,
            "/accounts/adjust",
            "/accounts/adjust/undo",
            {"account": inp.to_account, "delta": inp.amount},
            after=("debit",),
        ),
    ]
