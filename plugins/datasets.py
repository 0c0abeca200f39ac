"""Built-in datasets, registered through the same hook a third-party plugin uses."""

from functools import partial

from densreg.registry import Dataset, hookimpl
from densreg.registry.data import load_binarized_mnist, load_digits


def _digits(levels, split, data=None, download=False):
    return load_digits(split, levels=levels)


@hookimpl
def register_datasets(register):
    register(Dataset(
        name="binarized-mnist",
        description="MNIST with the fixed binarization of Larochelle & Murray (2011); 50000/10000/10000",
        event_shape=(1, 28, 28), num_categories=2, load=load_binarized_mnist, needs_files=True))
    register(Dataset(
        name="digits",
        description="scikit-learn's bundled 8x8 digits, binarized (value >= 8); 1197/300/300, no files needed",
        event_shape=(1, 8, 8), num_categories=2, load=partial(_digits, 2)))
    register(Dataset(
        name="digits-grey",
        description="scikit-learn's bundled 8x8 digits as 17 grey levels (0..16); 1197/300/300",
        event_shape=(1, 8, 8), num_categories=17, load=partial(_digits, 17)))
