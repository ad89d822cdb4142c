"""Benchmarks and studies. Each is a script run from the repository root as a module, e.g.
`python -m benchmarks.time_to_accuracy --quick --out OUT`, so it imports ray_al from the checkout
without installing it and imports its neighbours as `benchmarks.<name>`."""
