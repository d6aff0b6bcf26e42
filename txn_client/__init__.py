"""txn_client: submit and follow distributed transactions on a txn coordinator."""
