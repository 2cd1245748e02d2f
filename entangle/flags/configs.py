"""The parsed flags as typed library configs: the one place where flag values become
ExperimentConfig, TableConfig, TransferConfig, StudyConfig and MistakesConfig."""

from __future__ import annotations

from entangle.core import construct, models, robustify, train
from entangle.data import planted as planted_lib
from entangle.flags._checks import FLAGS, kinds_on, MODEL_KINDS, parse_columns, per_kind
from entangle.runtime import hardware
from entangle.stats import paper
from entangle.studies import entanglement, mistakes, pipeline, planted_study, transfer


def train_config(f, kind: str) -> train.TrainConfig:
    """The TrainConfig of a model kind (eps 0; the pipeline sets a robust model's eps), or of
    one victim architecture (``kind`` a victim name: its overrides, else the victims')."""
    victim = kind == "victim" or kind in models.VICTIMS
    group = "victim" if victim else kind
    return train.TrainConfig(
        arch=kind if kind in models.VICTIMS else per_kind(f.arch, kind), width=f.width,
        eps=0.0,
        attack_steps=f.train_attack_steps, attack_step_size=f.train_attack_step_size,
        attack_step_relative=f.train_attack_step_relative,
        attack_random_start=f.train_attack_random_start,
        attack_start_radius=f.train_attack_start_radius,
        batch_size=per_kind(f.batch_size, kind, int), epochs=per_kind(f.epochs, kind, int),
        learning_rate=per_kind(f.learning_rate, kind, float), optimizer=f.optimizer,
        lr_decay=f.lr_decay,
        lr_warmup=f.lr_warmup, ema=per_kind(f.ema, kind, float),
        zero_init_residual=f.zero_init_residual,
        augment=kinds_on(f.augment, group), early_stopping=kinds_on(f.early_stopping, group),
        patience=f.patience, weight_decay=f.weight_decay, pooling=f.pooling,
        bn_momentum=f.bn_momentum, bn_statistics=f.bn_statistics,
        pretrained=victim and f.victim_weights == "imagenet",
        input_size=per_kind(f.victim_input_size, kind, int) if victim else 0,
        precision=hardware.choose_precision(f.precision)[0], seed=f.seed)


def experiment_config(f=FLAGS) -> pipeline.ExperimentConfig:
    """All parsed flags as one typed ExperimentConfig."""
    planted = None
    if f.dataset == "planted":
        planted = planted_lib.PlantedConfig(
            image_size=f.planted_image_size, num_classes=f.planted_num_classes,
            train_size=f.planted_train_size, test_size=f.planted_test_size,
            features=f.planted_features, robust_norm=f.planted_robust_norm,
            entangled_norm=f.planted_entangled_norm, artifact_norm=f.planted_artifact_norm,
            robust_reliability=f.planted_robust_reliability, seed=f.data_seed)
    return pipeline.ExperimentConfig(
        data=pipeline.DataConfig(dataset=f.dataset, data_dir=f.data_dir, download=f.download,
                                 train_limit=f.train_limit, test_limit=f.test_limit,
                                 validation_fraction=f.validation_fraction,
                                 validation=f.validation_data, balance=f.imagenet9_balance,
                                 seed=f.data_seed,
                                 cache_dir=f.image_cache_dir, planted=planted,
                                 allow_empty_classes=f.allow_empty_classes),
        hparams={**{k: train_config(f, k) for k in MODEL_KINDS},
                 **{f"victim:{v}": train_config(f, v) for v in f.victims}},
        construct=construct.ConstructConfig(eps=f.construct_eps, steps=f.construct_steps,
                                            step_size=f.construct_step_size,
                                            targets=f.zero_robust_targets, seed=f.data_seed,
                                            source=f.construct_source),
        robustify=robustify.RobustifyConfig(steps=f.robustify_steps,
                                            step_size=f.robustify_step_size,
                                            eps=f.robustify_eps, seed=f.data_seed,
                                            schedule=f.robustify_schedule,
                                            keep_best=f.robustify_keep_best),
        eval=pipeline.EvalConfig(attack_steps=f.eval_attack_steps,
                                 step_size_factor=f.eval_step_size_factor,
                                 strong_steps=f.eval_strong_steps,
                                 strong_restarts=f.eval_strong_restarts,
                                 strong_images=f.eval_strong_images),
        runtime=train.RuntimeOptions(strategy=f.strategy, jit_compile=f.jit_compile,
                                     eval_batch_size=f.eval_batch_size, verbose=not f.quiet,
                                     on_corrupt=f.on_corrupt, probe_rates=f.probe_rates),
        workdir=f.workdir, pairing=f.seed_pairing)


def robust_row_eps(dataset: str) -> tuple[float, str]:
    """(eps, why) of the tables' robust row when --eps is not given: the paper's for the
    dataset, CIFAR-10's for any other (an image folder, planted)."""
    if dataset in paper.ROBUST_ROW_EPS:
        return paper.ROBUST_ROW_EPS[dataset], f"the paper's robust row on {dataset}"
    return paper.ROBUST_ROW_EPS["cifar10"], "the paper's CIFAR-10 robust row"


def table_config(f=FLAGS) -> entanglement.TableConfig:
    """The TableConfig of the parsed flags; --eps, when not given, is the paper's robust row
    (CIFAR-10 0.5, ImageNet-9 1.0). A given --eps must be a finite number > 0."""
    if f["eps"].present:
        eps = f.eps
        if not (eps > 0 and eps != float("inf")):
            raise ValueError(f"--eps (the robust row's L2 radius) must be a finite number > 0; "
                             f"got {eps}")
    else:
        eps = robust_row_eps(f.dataset)[0]
    return entanglement.TableConfig(eps=eps, columns=parse_columns(f.columns),
                                    rows=tuple(f.rows),
                                    evaluate_generators=f.evaluate_generators,
                                    robust_row=f.robust_row,
                                    generator_report=f.generator_report)


def seeds(f=FLAGS) -> list[int]:
    """--seeds as integers, or [--seed] when not given."""
    return [int(t) for t in f.seeds] if f.seeds else [f.seed]


def transfer_config(f=FLAGS) -> transfer.TransferConfig:
    """The TransferConfig of the parsed flags."""
    return transfer.TransferConfig(sources=parse_columns(f.sources), victims=tuple(f.victims),
                                   eps=f.transfer_eps, steps=f.transfer_steps,
                                   step_size=f.transfer_step_size, mode=f.attack,
                                   target_seed=f.target_seed, grid_images=f.grid_images,
                                   n_targeted_loss=f.n_targeted_loss, kappa=f.margin_kappa)


def study_config(f=FLAGS) -> planted_study.StudyConfig:
    """The StudyConfig of the parsed flags (the table flags give eps, columns and rows)."""
    return planted_study.StudyConfig(feature_sets=tuple(f.feature_sets),
                                     seeds=tuple(int(t) for t in f.study_seeds),
                                     table=table_config(f), probe_size=f.probe_size,
                                     construct_eps=tuple(float(t) for t in
                                                         f.study_construct_eps),
                                     detector_fpr=f.detector_fpr)


def mistakes_config(f=FLAGS) -> mistakes.MistakesConfig:
    """The MistakesConfig of the parsed flags."""
    return mistakes.MistakesConfig(second_model=f.second_model, eps=f.mistakes_eps,
                                   steps=f.mistakes_steps, step_size=f.mistakes_step_size,
                                   targets=f.mistakes_targets, target_seed=f.target_seed,
                                   relabel_init=f.relabel_init,
                                   leakage_eps=f.leakage_eps, probe_l2=f.probe_l2)
