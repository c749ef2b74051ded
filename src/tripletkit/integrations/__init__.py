"""Adapters that let other libraries' training loops use tripletkit's loss and mining."""
