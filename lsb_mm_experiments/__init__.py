"""The experiments beside lsb-mm: reproductions, benchmarks, the demo and the Debian / Fashion-MNIST /
Sphinx data loaders they use. The library imports nothing from here; ``lsb-mm demo`` loads it lazily."""
