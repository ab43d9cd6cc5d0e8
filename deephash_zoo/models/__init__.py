"""Model families; importing this module registers them with timm."""
__all__: list = []
