"""Built-in datasets, registered through the same hook a third-party plugin uses.

Each dataset's module holds its reader and its ``Dataset``; this module registers them.
"""

from densreg.registry import hookimpl

from .colour import COLOR_PATCHES, COLOR_PATCHES_256
from .digits import DIGITS, DIGITS_CONTINUOUS, DIGITS_GREY
from .mnist import BINARIZED_MNIST
from .patches import IMAGE_PATCHES


@hookimpl
def register_datasets(register):
    for dataset in (BINARIZED_MNIST, COLOR_PATCHES, COLOR_PATCHES_256, DIGITS, DIGITS_CONTINUOUS, DIGITS_GREY,
                    IMAGE_PATCHES):
        register(dataset)
