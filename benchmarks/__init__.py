"""`make bench`: benchmarks kept apart from the shipped package (as Kueue keeps test/performance)."""
