"""pytorch-metric-learning's ``LiftedStructureLoss`` as a pair rule: data that embedplug interprets,
so this plugin ships no kernel and needs no compiler."""

from embedplug.losses import make_loss_class
from embedplug.pair_rules import Affine, PairRule, Reducer, Side, VersusLse


def lifted_structure(neg_margin: float = 1.0, pos_margin: float = 0.0) -> PairRule:
    """``LiftedStructureLoss(neg_margin, pos_margin)`` (Oh Song et al. 2016), on euclidean distances
    of normalised embeddings: per positive pair (a, p),
    ``[log sum_n e^{neg_margin - d} + d_ap - pos_margin]_+^2 / 2`` over the negatives of a and of p,
    averaged over the positive pairs."""
    return PairRule(
        positives=Side(
            "euclidean",
            affine=Affine(-1.0, pos_margin),  # pos_margin - d_ap: the pair's term is z = LSE - (pos_margin - d_ap)
            term=VersusLse("negatives", rows="anchor_and_positive", outer="squared_hinge_half"),
            reduction="pairs",
        ),
        negatives=Side("euclidean", affine=Affine(-1.0, neg_margin)),  # neg_margin - d
        reducer=Reducer("mean", over="positive_pairs"),
        zero_without_both_pair_kinds=True,
    )


OH_SONG_2016_CITATION = """
@inproceedings{ohsong2016deep,
    title={Deep Metric Learning via Lifted Structured Feature Embedding},
    author={Hyun Oh Song and Yu Xiang and Stefanie Jegelka and Silvio Savarese},
    booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition},
    pages={4004--4012},
    year={2016}
}
"""

# A sentence-transformers loss class: ExampleLiftedStructureLoss(model, neg_margin=1.0, pos_margin=0.0).
ExampleLiftedStructureLoss = make_loss_class(
    lifted_structure, name="ExampleLiftedStructureLoss", citation=OH_SONG_2016_CITATION
)
