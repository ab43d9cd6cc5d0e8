"""Vet an uploaded file before the model sees it: a page visitor may send anything.

The demo answers a bad upload with one sentence in the page (what was wrong, what is accepted) instead of a
stack trace, and refuses huge images before decoding them: Pillow reads only the header to learn the size.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image

from deephash_zoo.data.images import MAX_ASPECT_RATIO, ImageRejected, check_image_size, to_rgb

__all__ = ['MAX_UPLOAD_BYTES', 'MAX_UPLOAD_PIXELS', 'UploadError', 'open_upload']

MAX_UPLOAD_BYTES = 10 * 2**20  # also the Gradio server's max_file_size, which stops larger uploads earlier
MAX_UPLOAD_PIXELS = 20_000_000  # a 20-megapixel photo; the model sees it at its input size anyway


class UploadError(ValueError):
    """An upload the demo will not encode; the message is shown to the visitor as is."""


def open_upload(path: str | os.PathLike, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS
                ) -> Image.Image:
    """The uploaded file as an RGB image, or :class:`UploadError` saying why not."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError:
        raise UploadError(f'{name}: the upload did not arrive; try again') from None
    if size > max_bytes:
        raise UploadError(f'{name} is {size / 2**20:.1f} MB; uploads are limited to {max_bytes / 2**20:.0f} MB')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                try:
                    check_image_size(name, *im.size, max_pixels=max_pixels, max_aspect=MAX_ASPECT_RATIO)
                    return to_rgb(im, name)
                except ImageRejected as e:
                    raise UploadError(str(e)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(f'{name} is too large an image; images up to {max_pixels / 1e6:.0f} megapixels '
                          'are accepted') from None
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError; truncated files too
        if isinstance(e, UploadError):
            raise
        raise UploadError(f'{name} is not an image Pillow can read (PNG, JPEG, WebP, GIF, BMP, ...)') from None
