"""Open an image file with its cost bounded before it is decoded.

Pillow reads the header first, so the size is known for free: a file whose pixels or aspect ratio exceed the
bounds is refused before any pixel is decoded. The aspect bound matters as much as the pixel bound: a
2,000,000 x 10 PNG is 20 megapixels and 2.5 KB, but resizing its shorter side to 64 builds a 12.8M x 64 image.
"""
import warnings
from os import PathLike
from typing import Union

from PIL import Image

__all__ = ['MAX_IMAGE_PIXELS', 'MAX_ASPECT_RATIO', 'ImageRejected', 'check_image_size', 'open_rgb']

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
                return im.convert('RGB')
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(f'{name} decodes to more than {max_pixels / 1e6:g} megapixels; refused') from None
    except ImageRejected:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # missing, truncated or unidentified files
        raise ImageRejected(f'{name}: cannot open image ({e})') from None
