"""Sagas: the pure state machine, the driver, retry policies and the catalogue of named sagas."""

# Importing the definitions registers them in the catalogue.
from sagas import place_order as _place_order  # noqa: F401
from sagas import transfer as _transfer  # noqa: F401
from sagas.catalogue import REGISTRY, Plan, SagaInputError, StepSpec, Uses, expand, saga

__all__ = ["REGISTRY", "Plan", "SagaInputError", "StepSpec", "Uses", "expand", "saga"]
