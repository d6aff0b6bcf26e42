"""The e-commerce demo shop: orders, inventory, payments and shipping, each a participant service
with its own database, plus what they share (the product catalogue)."""
