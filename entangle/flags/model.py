"""Model flags: the architectures of the table's classifiers, and the transfer victims."""

from __future__ import annotations

from absl import flags

from entangle.core import models, train
from entangle.flags._checks import (FLAGS, MODEL_KINDS, VICTIM_WEIGHTS, per_kind, per_kind_ok,
                                    validator)


def define_model_flags(fv=FLAGS):
    flags.DEFINE_string("arch", "resnet56v2", "Architecture per kind: resnet<9n+2>v2 or a "
                        "victim name; 'default,kind:arch,...'.", flag_values=fv)
    flags.DEFINE_integer("width", 16, "ResNet v2 base width (16 in the paper).", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_bool("zero_init_residual", False, "ResNet v2: start the last convolution of "
                      "every residual branch at zero (each block starts as the identity).",
                      flag_values=fv)
    flags.DEFINE_enum("pooling", "global", list(models.POOLINGS), "ResNet v2 pooling before "
                      "the logits: keras_example = AveragePooling2D(8)+Flatten (>= 32 px), "
                      "global = global average pooling.", flag_values=fv)

    def arch_ok(text):
        try:
            for k in MODEL_KINDS:
                if k != "victim":
                    train.parse_arch(per_kind(text, k))
            return True
        except ValueError:
            return False
    validator("arch", arch_ok, "must be resnet<depth>v2 (depth 9n+2) or a victim name, "
              "optionally per kind ('resnet56v2,zero_robust:resnet20v2')", fv)


def define_victim_flags(fv=FLAGS):
    flags.DEFINE_string("victim_input_size", "0", "Victims resize inputs to this size inside the "
                        "model (0: the dataset's size, raised to the architecture's minimum), "
                        "optionally per victim ('0,mobilenet_v2:64').", flag_values=fv)
    flags.DEFINE_list("victims", list(models.VICTIMS), "Victim architectures for transfer.",
                      flag_values=fv)
    flags.DEFINE_enum("victim_weights", "imagenet", list(VICTIM_WEIGHTS),
                      "Victims start from ImageNet weights (Table 3; the files must be in the "
                      "Keras cache when offline) or from scratch (none).", flag_values=fv)
    validator("victim_input_size", per_kind_ok(int, models.VICTIMS, minimum=0),
              "must be an integer >= 0, optionally per victim ('0,mobilenet_v2:64')", fv)
    validator("victims", lambda v: set(v) <= set(models.VICTIMS),
              f"must be a subset of {', '.join(models.VICTIMS)}", fv)
