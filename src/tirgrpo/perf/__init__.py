"""Performance: the memory estimate (model shape, workload, estimate, what would fit) and its
measurement, and the speed benchmarks. The trainer's memory check is `train.plan.fit_memory`."""
