"""A tiny inventory tracker used as a seed for code-oriented instructions."""


class Inventory:
    def __init__(self):
        self.items = {}

    def add(self, name, quantity):
        if quantity <= 0:
            raise ValueError("quantity must be positive")
        self.items[name] = self.items.get(name, 0) + quantity

    def remove(self, name, quantity):
        have = self.items.get(name, 0)
        if quantity > have:
            raise ValueError(f"only {have} {name} in stock")
        self.items[name] = have - quantity
        if self.items[name] == 0:
            del self.items[name]

    def total(self):
        return sum(self.items.values())
