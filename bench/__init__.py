"""Benchmarks, one module per `engine bench` command (bench/cli.py lists them), and the helpers
they share: bench/common.py (command line, machine, percentiles), random_models.py,
workloads.py, peak_memory.py, mfu.py."""
