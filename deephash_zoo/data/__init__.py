"""Data sets as uint8 images + label vectors, offline-first."""
from .cifar10 import CIFAR10_CLASSES, CIFAR10_PROTOCOLS, cifar10_split, read_cifar10
from .coco import load_coco
from .dataset import HashDataset, to_multi_hot
from .fashion_mnist import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx
from .folder import load_image_folder
from .listfile import load_list_file
from .mosaic import compose_mosaic, make_mosaic, mosaic_indices
from .protocols import (
    PROTOCOLS,
    Protocol,
    Split,
    build_retrieval_data,
    labels_survive_flip,
    preset_name,
    split_protocol,
)

__all__ = [
    'FASHION_MNIST_CLASSES', 'DEFAULT_FASHION_MNIST_DIR', 'load_fashion_mnist', 'read_idx',
    'HashDataset', 'to_multi_hot', 'load_list_file', 'load_image_folder', 'load_coco',
    'CIFAR10_CLASSES', 'CIFAR10_PROTOCOLS', 'cifar10_split', 'read_cifar10',
    'compose_mosaic', 'make_mosaic', 'mosaic_indices',
    'PROTOCOLS', 'Protocol', 'Split', 'build_retrieval_data', 'labels_survive_flip', 'preset_name',
    'split_protocol',
]
