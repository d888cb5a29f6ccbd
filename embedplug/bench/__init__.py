"""Side-by-side benchmarks of embedplug's fused losses against the peers (same process, same inputs)."""
