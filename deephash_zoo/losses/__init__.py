"""Training objectives of the two papers."""
