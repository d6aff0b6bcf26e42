"""The branch operations each participant declares (its signed catalogue, ``POST
/txn/catalogue``), cached, and the check that a submission names only those: the coordinator
calls only declared branch endpoints, never any POST path a participant happens to serve.

Every catalogue is read at start (``warm``, retried until each participant has answered), and
refreshed in the background once it is ``refresh_s`` old, while the one verified before keeps
serving; a submission naming an operation the cached one lacks reads it once more (at most
every ``recheck_s``), so a participant that deploys a new operation is picked up at once.
With no catalogue ever read (the participant is down since the coordinator started, or its
answers do not verify), a submission is refused with 503: it cannot be checked, and nothing is
logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.models import BranchIn
from coordinator.normalize import Invalid
from coordinator.transport import Transport

log = logging.getLogger(__name__)

# (path, kind) -> the declared compensation (saga actions), the declared (confirm, cancel)
# (TCC tries), or None.
Operations = dict[tuple[str, str], str | tuple[str, str] | None]
KINDS = ("2pc", "action", "compensation", "tcc_try", "tcc_confirm", "tcc_cancel")


class CatalogueUnavailable(Exception):
    """A participant's catalogue could not be read or verified; the submission may be retried."""


@dataclass
class _Entry:
    operations: Operations
    read_at: float


def _operations(raw: list[dict[str, object]]) -> Operations:
    out: Operations = {}
    for op in raw:
        path, kind = op.get("path"), op.get("kind")
        if not isinstance(path, str) or kind not in KINDS:
            continue
        if kind == "tcc_try":
            confirm, cancel = op.get("confirm"), op.get("cancel")
            if isinstance(confirm, str) and isinstance(cancel, str):
                out[(path, "tcc_try")] = (confirm, cancel)
            continue  # a try without both is no TCC branch anyone can submit
        undo = op.get("compensation")
        out[(path, str(kind))] = undo if isinstance(undo, str) and kind == "action" else None
    return out


class Declared:
    def __init__(
        self,
        transport: Transport,
        participants: Sequence[str] = (),
        refresh_s: float = 60.0,
        recheck_s: float = 2.0,
    ) -> None:
        self.transport = transport
        self.participants = sorted(participants)
        self.refresh_s = refresh_s
        self.recheck_s = recheck_s
        self._cache: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._refreshing: dict[str, asyncio.Task[object]] = {}

    async def warm(self, retry_s: float = 1.0) -> None:
        """Read every participant's catalogue, retrying those that do not answer (a task the
        coordinator runs from its start)."""
        missing = list(self.participants)
        while missing:
            for participant in list(missing):
                if isinstance(await self._read(participant), _Entry):
                    missing.remove(participant)
            if missing:
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, 30.0)

    def _refresh_later(self, participant: str) -> None:
        task = self._refreshing.get(participant)
        if task is None or task.done():
            self._refreshing[participant] = asyncio.create_task(
                self._read(participant), name=f"catalogue:{participant}"
            )

    def read(self) -> dict[str, bool]:
        """Whether each participant's catalogue has been read (``/readyz`` shows it)."""
        return {name: name in self._cache for name in self.participants}

    async def probe(self, participant: str) -> tuple[list[tuple[str, str]], str | None]:
        """Read ``participant``'s catalogue now: (its operations as (kind, path), sorted; None,
        or why it could not be read and verified). Falls back on the cached operations."""
        fresh = await self._read(participant)
        ops = self.cached(participant)
        return ops, (fresh if isinstance(fresh, str) else None)

    def snapshot(self) -> dict[str, Operations]:
        """The operations last verified for each participant whose catalogue was read (what
        the OpenAPI document the coordinator serves is made of)."""
        return {name: dict(entry.operations) for name, entry in self._cache.items()}

    def cached(self, participant: str) -> list[tuple[str, str]]:
        """The operations last verified for ``participant``, as (kind, path), sorted."""
        entry = self._cache.get(participant)
        return sorted((kind, path) for path, kind in entry.operations) if entry else []

    async def close(self) -> None:
        for task in self._refreshing.values():
            task.cancel()
        await asyncio.gather(*self._refreshing.values(), return_exceptions=True)

    async def _read(self, participant: str) -> _Entry | str:
        lock = self._locks.setdefault(participant, asyncio.Lock())
        async with lock:
            raw = await self.transport.catalogue(participant)
        if isinstance(raw, str):
            log.warning("catalogue of %s unreadable: %s", participant, raw)
            return raw
        entry = _Entry(_operations(raw), asyncio.get_running_loop().time())
        self._cache[participant] = entry
        return entry

    async def _entry(self, participant: str, stale_after: float) -> _Entry:
        now = asyncio.get_running_loop().time()
        entry = self._cache.get(participant)
        if entry is not None and now - entry.read_at < stale_after:
            return entry
        if entry is not None and stale_after == self.refresh_s:
            # Old, not wrong: answer from it and read a new one meanwhile (a participant that
            # is down must not slow every submission by a call timeout).
            self._refresh_later(participant)
            return entry
        fresh = await self._read(participant)
        if isinstance(fresh, _Entry):
            return fresh
        if entry is not None:
            return entry  # keep using what was verified before
        raise CatalogueUnavailable(
            f"cannot read participant {participant}'s catalogue of branch operations "
            f"({fresh}); retry"
        )

    async def check(self, mode: str, branches: Sequence[BranchIn], loc: tuple[str, ...]) -> None:
        """Raise Invalid naming the first branch that is not a declared operation."""
        for i, branch in enumerate(branches):
            entry = await self._entry(branch.participant, self.refresh_s)
            problem = undeclared(mode, branch, entry.operations)
            if problem is not None:
                entry = await self._entry(branch.participant, self.recheck_s)
                problem = undeclared(mode, branch, entry.operations)
            if problem is not None:
                raise Invalid((*loc, i), f"{branch.participant}: {problem}")


def _kind(path: str, operations: Operations) -> str:
    names = {"2pc": "a 2PC operation", "action": "a saga action", "tcc_try": "a TCC try"}
    for kind, name in names.items():
        if (path, kind) in operations:
            return name
    return "not declared"


def undeclared(mode: str, branch: BranchIn, operations: Operations) -> str | None:
    path = branch.forward
    if mode == "2pc":
        if (path, "2pc") in operations:
            return None
        return f"{path} is not a 2PC branch operation ({_kind(path, operations)})"
    if mode == "tcc":
        declared = operations.get((path, "tcc_try"))
        if not isinstance(declared, tuple):
            return f"{path} is not a TCC try ({_kind(path, operations)})"
        confirm, cancel = declared
        if (branch.confirm, branch.cancel) != (confirm, cancel):
            return (
                f"{path} is confirmed by {confirm} and cancelled by {cancel}, not "
                f"{branch.confirm} and {branch.cancel}"
            )
        return None
    if (path, "action") not in operations:
        return f"{path} is not a saga action ({_kind(path, operations)})"
    undo = operations[(path, "action")]
    if branch.compensation != undo:
        return f"the compensation of {path} is {undo}, not {branch.compensation}"
    return None
