"""The reusable core: models, attacks (PGD, robustification and construction as objectives
of one loop), training (the loop: fit on arrays or tf.data), inference and linear probes.
It knows nothing of the artifact store or of flags."""
