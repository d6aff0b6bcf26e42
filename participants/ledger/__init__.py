"""The ledger: a small participant holding account balances; the demo's, the tests' and the
benchmark's participant."""
