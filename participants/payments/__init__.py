"""Payments: customers' wallets (in cents), charged for orders as a 2PC branch or a saga step,
and refunded by the saga compensation."""
