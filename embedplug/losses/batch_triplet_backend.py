"""``backend_info()`` of the batch triplet family (BatchHard, BatchHardSoftMargin, BatchSemiHard, BatchAll)."""

from __future__ import annotations

from embedplug import _extension
from embedplug.distances import kernel_distance
from embedplug.st_version import current, loss_report


class BatchTripletBackendMixin:
    """Reports the op a batch triplet loss runs (``kernel_op``, set by each class) for its ``distance_metric``."""

    kernel_op: str

    def backend_info(self, device_type: str = "cpu") -> dict:
        """Which implementation this loss runs on ``device_type``, why, and which sentence-transformers
        release's distance rules it follows: ``{"implementation", "reason", "follows_sentence_transformers"}``."""
        name = kernel_distance(self.distance_metric)
        if name is None:
            info = {
                "implementation": "reference",
                "reason": "pure-torch reference: a distance_metric the fused kernels do not know "
                "(an N x N distance matrix per batch)",
            }
        else:
            info = dict(_extension._op_backend(self.kernel_op, device_type))
            if name == "cosine" and current().cosine_distance_clamped and info["implementation"] == "fused":
                info["reason"] += (
                    "; cosine distance clamped at 0: a batch holding a near-parallel pair runs the exact "
                    "distance matrix instead (the kernel's 1 - cos can round below 0 there)"
                )
        return {**info, **loss_report()}
