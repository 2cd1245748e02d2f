"""Where the code runs: hardware and precision, tf.distribute strategies, preemption
(SIGTERM/SIGINT), progress bars, and atomic files and locks."""
