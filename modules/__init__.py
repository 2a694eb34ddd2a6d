"""The engine and its services (no web framework here)."""
