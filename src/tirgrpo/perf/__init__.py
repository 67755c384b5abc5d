"""Performance: the memory estimate and measurement, and the speed benchmarks."""
