"""Built-in datasets, registered through the same hook a third-party plugin uses.

Each dataset's module holds its reader and its ``Dataset``; this module registers them.
"""

from densreg.registry import hookimpl

from .digits import DIGITS, DIGITS_GREY
from .mnist import BINARIZED_MNIST


@hookimpl
def register_datasets(register):
    for dataset in (BINARIZED_MNIST, DIGITS, DIGITS_GREY):
        register(dataset)
