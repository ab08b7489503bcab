"""tfds builders this project adds. Importing the package registers them with tfds."""
from zfnet_jax.datasets import sklearn_digits  # noqa: F401  (registers 'sklearn_digits')
