"""Python front of the extension's ops: fake kernels, autograd, and the fused-or-reference dispatch.

Importing a module here registers its op's fake (meta) kernel and autograd formula, but only when
``embedplug._C`` loaded; otherwise the functions run the pure-torch reference.
"""

from embedplug.ops.batch_all import batch_all_triplet_loss_forward
from embedplug.ops.batch_hard import batch_hard_mining
from embedplug.ops.labelled_contrastive import circle_loss_forward, multi_similarity_loss_forward, supcon_loss_forward
from embedplug.ops.hardest_negative import hardest_off_diagonal_similarity
from embedplug.ops.masked_infonce import masked_infonce, masked_infonce_mean
from embedplug.ops.semi_hard import semi_hard_triplet_loss_forward

__all__ = [
    "batch_all_triplet_loss_forward",
    "batch_hard_mining",
    "circle_loss_forward",
    "hardest_off_diagonal_similarity",
    "masked_infonce",
    "masked_infonce_mean",
    "multi_similarity_loss_forward",
    "semi_hard_triplet_loss_forward",
    "supcon_loss_forward",
]
