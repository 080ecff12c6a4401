"""A tiny module for the quick-start demo project."""


def add(a: float, b: float) -> float:
    """Return the sum of a and b."""
    return a + b


def divide(a: float, b: float) -> float:
    """Return a / b; raise ValueError when b is zero."""
    if b == 0:
        raise ValueError("division by zero")
    return a / b
