"""Model families; importing this module registers them with timm."""
from .admth import ADMTH
from .any_backbone import BackboneHash, hash_model
from .attention import ChannelAttention, DualAttention, PositionAttention
from .contract import HashingMixin, pack_signs
from .dath import DATH

__all__ = [
    'ADMTH', 'DATH', 'BackboneHash', 'hash_model', 'HashingMixin', 'pack_signs',
    'PositionAttention', 'ChannelAttention', 'DualAttention', 'list_hash_models',
]


def list_hash_models() -> list:
    """Names of every model this package registers with timm."""
    import timm

    return sorted(n for n in timm.list_models() if n.startswith(('dath', 'admth_', 'dmlh_')))
