"""The shop's orders: takes an order, hands it to a coordinator (as a 2PC transaction or as the
``place_order`` saga) and records the outcome."""
