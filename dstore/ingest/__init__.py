"""Adding datasets: walk, chunk, pack, erasure-code and publish (docs/architecture.md)."""
