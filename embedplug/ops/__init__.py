"""The extension's ops, each declared once (:mod:`embedplug.ops.spec`) and run through one generic
layer (:mod:`embedplug.ops.layer`): boundary checks, fused-or-reference dispatch, fake kernels and
autograd (registered only when ``embedplug._C`` loaded), and the backend report.
"""

from embedplug.ops.batch_all import batch_all_triplet_loss_forward
from embedplug.ops.batch_hard import batch_hard_mining
from embedplug.ops.hard_negative_topk import hard_negative_topk
from embedplug.ops.hardest_negative import hardest_off_diagonal_similarity
from embedplug.ops.layer import SPECS, backend, backend_info, backend_of, force_reference, runs_fused
from embedplug.ops.masked_infonce import masked_infonce, masked_infonce_mean
from embedplug.ops.pair_rule import pair_rule_forward
from embedplug.ops.semi_hard import semi_hard_triplet_loss_forward

__all__ = [
    "SPECS",
    "backend",
    "backend_info",
    "backend_of",
    "batch_all_triplet_loss_forward",
    "batch_hard_mining",
    "hard_negative_topk",
    "force_reference",
    "hardest_off_diagonal_similarity",
    "masked_infonce",
    "masked_infonce_mean",
    "pair_rule_forward",
    "runs_fused",
    "semi_hard_triplet_loss_forward",
]
