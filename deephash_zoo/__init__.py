"""deephash-zoo: deep supervised hashing models for image retrieval, as timm models.

Importing this package registers every model with timm, so ``timm.create_model('dath_alexnet_32')``
works without further set-up.
"""
from .utils import package_version

__version__ = package_version()

from .models import *  # noqa: F401,F403,E402  (registers the models with timm)
from .models import __all__ as _model_all  # noqa: E402
from .retrieval.folder import encode_images  # noqa: E402

__all__ = ['__version__', 'encode_images', *_model_all]
