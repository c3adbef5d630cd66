# The live drop benchmark; included by the Makefile.
# docs/live-benchmark.md explains it and holds its numbers.

.PHONY: bench-live
bench-live: ## Flood a veth from 100k banned sources: drops per CPU-second of XDP vs nftables input/forward (root, ~2 min).
	$(GO) test -run '^$$' -bench '^BenchmarkLiveDrop$$' -benchtime 1x -v -timeout 10m ./internal/livebench/
