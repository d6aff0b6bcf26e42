"""The shop's shipping: one shipment per order, refused for destinations it does not serve."""
