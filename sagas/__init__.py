"""Sagas: the pure state machine, the driver, retry policies and the catalogue of named sagas."""

from sagas import transfer as _transfer  # noqa: F401  (registers the catalogue's sagas)
from sagas.catalogue import REGISTRY, Plan, SagaInputError, StepSpec, expand, saga

__all__ = ["REGISTRY", "Plan", "SagaInputError", "StepSpec", "expand", "saga"]
