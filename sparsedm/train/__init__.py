"""Making 2:4-sparse and few-step models: pruning with channel permutation, SR-STE sparse
fine-tuning, progressive distillation. See docs/TRAINING.md."""

from sparsedm.train.distill import (
    DistillResult,
    DistillStep,
    TimeInput,
    alpha_sigma,
    ddim_sample,
    ddim_step,
    distill_step,
    distill_target,
    logsnr_cosine,
    predict,
    progressive_distill,
    sampler_settings,
)
from sparsedm.train.layers import UVIT_SPARSEDM_LAYERS, ineligible_reason, kept_fraction, nm_mask, select_layers
from sparsedm.train.permute import find_producers, search_permutation
from sparsedm.train.prune import LayerPruneReport, PruneReport, permute_channels, prune24
from sparsedm.train.srste import (
    DEFAULT_DECAY,
    SparseTraining,
    SparsitySchedule,
    SRSTEConv2d,
    SRSTELinear,
    finalize,
    sparsify_for_training,
    srste_weight,
)

__all__ = [
    "DEFAULT_DECAY",
    "DistillResult",
    "DistillStep",
    "LayerPruneReport",
    "PruneReport",
    "SRSTEConv2d",
    "SRSTELinear",
    "SparseTraining",
    "SparsitySchedule",
    "TimeInput",
    "UVIT_SPARSEDM_LAYERS",
    "alpha_sigma",
    "ddim_sample",
    "ddim_step",
    "distill_step",
    "distill_target",
    "finalize",
    "find_producers",
    "ineligible_reason",
    "kept_fraction",
    "logsnr_cosine",
    "nm_mask",
    "permute_channels",
    "predict",
    "progressive_distill",
    "prune24",
    "sampler_settings",
    "search_permutation",
    "select_layers",
    "sparsify_for_training",
    "srste_weight",
]
