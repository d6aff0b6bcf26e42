"""The inventory: stock per SKU of the shop's catalogue, reserved for orders as a 2PC branch or
a saga step, and released again by the saga compensation."""
