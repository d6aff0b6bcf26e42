"""The shop's products: SKU → name and unit price in cents. Shared by the orders service (which
prices an order) and the inventory (which only keeps stock); the demo seeds stock for these."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    price: int  # cents


PRODUCTS: dict[str, Product] = {
    p.sku: p
    for p in (
        Product("SKU-1", "Espresso beans, 1 kg", 2400),
        Product("SKU-2", "Burr grinder", 8900),
        Product("SKU-3", "Milk jug", 1500),
        Product("SKU-4", "Tamper", 2900),
        Product("SKU-5", "Knock box", 1900),
        Product("SKU-6", "Scale", 3900),
        Product("SKU-7", "Limited-edition cup", 4500),
        Product("SKU-8", "Descaler", 900),
        Product("SKU-9", "Cleaning tablets", 700),
        Product("SKU-10", "Gooseneck kettle", 6900),
        Product("SKU-11", "Filter papers", 500),
        Product("SKU-12", "Pour-over dripper", 2500),
    )
}


def price_of(items: list[tuple[str, int]]) -> int:
    """Total in cents of (sku, qty) pairs; KeyError for an unknown SKU."""
    return sum(PRODUCTS[sku].price * qty for sku, qty in items)


def money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"
