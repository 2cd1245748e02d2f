"""Training flags: the classifiers' schedule, per model kind (Table 3), and the one model the
train binary builds."""

from __future__ import annotations

from absl import flags

from entangle.core import train_config
from entangle.studies import pipeline
from entangle.flags._checks import (FLAGS, MODEL_KINDS, eps_validators, kinds_ok, per_kind_ok,
                                    validator)


def define_train_flags(fv=FLAGS):
    flags.DEFINE_float("eps", 0.0, "Adversarial training radius (L2, [0,1] pixels) of the "
                       "robust model; the tables' robust row when given (otherwise the "
                       "paper's: 0.5 on CIFAR-10, 1.0 on ImageNet-9).", flag_values=fv)
    flags.DEFINE_string("batch_size", "200", "Global batch size per kind.", flag_values=fv)
    flags.DEFINE_string("epochs", "100", "Epochs per kind (an upper bound with early stopping).",
                        flag_values=fv)
    flags.DEFINE_string("learning_rate", "1e-3", "Learning rate per kind.", flag_values=fv)
    flags.DEFINE_enum("optimizer", "adam", list(train_config.OPTIMIZERS),
                      "adam: the paper's (Keras defaults, beta 0.9/0.999); sgd: momentum 0.9, "
                      "Nesterov, on --learning_rate and its schedule.", flag_values=fv)
    flags.DEFINE_enum("lr_decay", "step", list(train_config.LR_DECAYS),
                      "Learning-rate schedule (see entangle.core.schedules.learning_rate_at).",
                      flag_values=fv)
    flags.DEFINE_float("lr_warmup", 0.0, "Fraction of the training steps with a linear "
                       "learning-rate warm-up from 0 (with --lr_decay=cosine or none).",
                       lower_bound=0.0, upper_bound=0.99, flag_values=fv)
    flags.DEFINE_string("ema", "0", "Momentum of an exponential moving average of the weights "
                        "that replaces them after training, per kind (0: off; not for kinds "
                        "that early-stop): '0.99,zero_robust:0'.", flag_values=fv)
    flags.DEFINE_string("augment", "standard,robust,victim",
                        "Kinds trained with crop+flip augmentation.", flag_values=fv)
    flags.DEFINE_string("early_stopping", "zero_robust,neg_robust",
                        "Kinds that keep their best validation checkpoint.", flag_values=fv)
    flags.DEFINE_integer("patience", 10, "Early stopping patience, epochs.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_float("weight_decay", 1e-4, "L2 kernel regularisation of the ResNet v2 convs.",
                       lower_bound=0.0, flag_values=fv)
    flags.DEFINE_enum("precision", "float32", [*train_config.PRECISIONS, "auto"], "Keras dtype "
                      "policy; auto: mixed_bfloat16 on a CPU with native bf16 (AMX, "
                      "AVX512-BF16), oneDNN on and no GPU, else float32 (logged at start).",
                      flag_values=fv)
    flags.DEFINE_float("bn_momentum", 0.99, "Batch-norm moving-average momentum of the ResNets "
                       "(Keras' default 0.99).", lower_bound=0.0, upper_bound=0.999999,
                       flag_values=fv)
    flags.DEFINE_enum("bn_statistics", "recompute", list(train_config.BN_STATISTICS),
                      "After training, recompute every batch norm's statistics over the "
                      "training inputs (precise BN), over them augmented as in training, "
                      "or keep the moving averages.",
                      flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Training seed.", lower_bound=0, upper_bound=2 ** 31 - 1,
                         flag_values=fv)
    eps_validators(fv, {"eps": False})
    validator("batch_size", per_kind_ok(int), "must be an integer > 0, optionally per kind ('200,victim:128')", fv)
    validator("epochs", per_kind_ok(int), "must be an integer > 0, optionally per kind ('200,victim:128')", fv)
    validator("learning_rate", per_kind_ok(float), "must be a number > 0, optionally per kind ('1e-3,zero_robust:1e-4')", fv)
    validator("ema", per_kind_ok(float, minimum=0), "must be a number in [0, 1), optionally "
              "per kind ('0.99,zero_robust:0')", fv)
    for name in ("augment", "early_stopping"):
        validator(name, kinds_ok, f"must be all, none or a list of {', '.join(MODEL_KINDS)}",
                  fv)


def define_single_model_flags(fv=FLAGS):
    flags.DEFINE_enum("kind", "standard", list(pipeline.KINDS), "Model kind to train.",
                      flag_values=fv)
    flags.DEFINE_float("attack_eps", None, "Report PGD accuracy at this eps (default: the "
                       "model's own eps; none for standard models).", lower_bound=0.0,
                       flag_values=fv)
    eps_validators(fv, {"attack_eps": False})
