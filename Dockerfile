# The image every service of compose.yaml built from this project runs: the coordinator
# (`txn serve`), the migration job (`txn migrate`), the ledgers (`python -m participants.ledger`)
# and the demo shop's services (`python -m participants.orders`, `.inventory`, `.payments`,
# `.shipping`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# README.m[d]: copied when present (pyproject names it), without failing when absent.
COPY pyproject.toml README.m[d] ./
COPY coordinator ./coordinator
COPY participants ./participants
COPY sagas ./sagas
COPY txn_client ./txn_client
COPY migrations ./migrations
COPY txn_devstack ./txn_devstack
COPY txn_bench ./txn_bench
# With the tracing extra: TXN_TRACING / TXNP_TRACING=otlp then needs no other image.
RUN pip install ".[tracing]" && rm -rf /src

# Run from the installed package, as an unprivileged user.
RUN useradd --system --create-home --uid 10001 txn
USER txn
WORKDIR /home/txn

EXPOSE 8000
CMD ["txn", "serve"]
