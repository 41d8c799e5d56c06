module imflow/benchmarks/loadgen

go 1.23
