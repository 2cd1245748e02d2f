"""Where the code runs: hardware and precision, tf.distribute strategies, preemption
(SIGTERM/SIGINT), progress bars, and atomic files and locks."""

import os


def cache_dir() -> str:
    """This user's cache on this machine (decoded image folders, measured op rates):
    ``$ENTANGLE_CACHE`` or ``~/.cache/entangle``."""
    return os.environ.get("ENTANGLE_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                         "entangle"))
