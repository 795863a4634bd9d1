"""A tiny in-memory inventory used by the order service."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Item:
    sku: str
    name: str
    quantity: int = 0
    tags: list[str] = field(default_factory=list)


class Inventory:
    def __init__(self) -> None:
        self._items: dict[str, Item] = {}

    def add(self, item: Item) -> None:
        if item.sku in self._items:
            self._items[item.sku].quantity += item.quantity
        else:
            self._items[item.sku] = item

    def restock(self, sku: str, amount: int) -> int:
        <|cursor|>

    def remove(self, sku: str) -> Item | None:
        return self._items.pop(sku, None)


def total_quantity(inventory: Inventory) -> int:
    return sum(item.quantity for item in inventory._items.values())
