"""Benchmarks: Headway against what users would pick instead, in one run (`make bench`)."""
