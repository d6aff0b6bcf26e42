"""The transaction coordinator: REST API, durable log, 2PC driver, recovery."""
