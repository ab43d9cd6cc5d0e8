"""Data sets as uint8 images + label vectors, offline-first."""
from .fashion_mnist import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx

__all__ = ['FASHION_MNIST_CLASSES', 'DEFAULT_FASHION_MNIST_DIR', 'load_fashion_mnist', 'read_idx']
