"""``backend_info()`` of the batch triplet family (BatchHard, BatchHardSoftMargin, BatchSemiHard, BatchAll)."""

from __future__ import annotations

from embedplug.distances import kernel_distance
from embedplug.ops import backend_of
from embedplug.st_version import current, loss_report


class BatchTripletBackendMixin:
    """Reports the op a batch triplet loss runs (its ``embedplug_ops``) for its ``distance_metric``."""

    embedplug_ops: tuple[str, ...]

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
            info = dict(backend_of(self.embedplug_ops, device_type))
            if name == "cosine" and current().cosine_distance_clamped and info["implementation"] == "fused":
                info["reason"] += (
                    "; cosine distance clamped at 0: a batch holding a near-parallel pair runs the exact "
                    "distance matrix instead (the kernel's 1 - cos can round below 0 there)"
                )
        return {**info, **loss_report()}
