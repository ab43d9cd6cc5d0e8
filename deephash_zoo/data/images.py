"""Open an image file with its cost bounded before it is decoded, and turn any image into the RGB the models read.

Pillow reads the header first, so the size is known for free: a file whose pixels or aspect ratio exceed the
bounds is refused before any pixel is decoded. The aspect bound matters as much as the pixel bound: a
2,000,000 x 10 PNG is 20 megapixels and 2.5 KB, but resizing its shorter side to 64 builds a 12.8M x 64 image.
"""
import warnings
from os import PathLike
from typing import Union

import numpy as np
from PIL import Image

__all__ = ['IMAGE_SUFFIXES', 'MAX_IMAGE_PIXELS', 'MAX_ASPECT_RATIO', 'ImageRejected', 'check_image_size', 'open_rgb',
           'to_rgb']

# the files read as images wherever a folder is searched (folder: data, deephash-encode's folders)
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
MAX_IMAGE_PIXELS = 40_000_000  # a 40-megapixel photo decodes to 120 MB of RGB
MAX_ASPECT_RATIO = 20.0  # longer side / shorter side: panoramas pass, pixel strips do not


class ImageRejected(ValueError):
    """An image file that will not be decoded: unreadable, or beyond the size bounds (the message says which)."""


def check_image_size(name: str, width: int, height: int, max_pixels: int = MAX_IMAGE_PIXELS,
                     max_aspect: float = MAX_ASPECT_RATIO) -> None:
    """Refuse ``width`` x ``height`` beyond the bounds, naming the image and the bound."""
    if width < 1 or height < 1:
        raise ImageRejected(f'{name} is {width} x {height} pixels: empty')
    if width * height > max_pixels:
        raise ImageRejected(f'{name} is {width:,} x {height:,} pixels; images up to {max_pixels / 1e6:g} '
                            'megapixels are accepted')
    if max(width, height) / min(width, height) > max_aspect:
        raise ImageRejected(f'{name} is {width:,} x {height:,} pixels; the longer side may be at most '
                            f'{max_aspect:g} times the shorter')


def open_rgb(path: Union[str, PathLike], max_pixels: int = MAX_IMAGE_PIXELS,
             max_aspect: float = MAX_ASPECT_RATIO) -> Image.Image:
    """The image at ``path`` as RGB, or :class:`ImageRejected` naming the file and what is wrong with it."""
    name = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                check_image_size(name, *im.size, max_pixels=max_pixels, max_aspect=max_aspect)
                return to_rgb(im, name)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(f'{name} decodes to more than {max_pixels / 1e6:g} megapixels; refused') from None
    except ImageRejected:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # missing, truncated or unidentified files
        raise ImageRejected(f'{name}: cannot open image ({e})') from None


# Pillow's 16-bit grey modes ('I' is how 16-bit PNGs and TIFFs of integers can also open): scaled to 8 bits here,
# where Pillow's own convert('RGB') clips every value above 255 to white
_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')


def to_rgb(image: Image.Image, name: str = 'image') -> Image.Image:
    """``image`` as 8-bit RGB, as Pillow's ``convert('RGB')`` gives it (alpha dropped, palette expanded, EXIF
    orientation not applied, as timm's and torchvision's loaders do), except that 16-bit grey is scaled to 8 bits
    (65,535 -> 255) instead of clipped, and a floating-point image, whose range nothing defines, is refused."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert('RGB')  # uint8 2-D: mode L
    if image.mode == 'F':
        raise ImageRejected(f'{name}: a floating-point image (mode F) has no defined value range; '
                            'save it as 8- or 16-bit first')
    return image.convert('RGB')
