"""plait.integrations."""
