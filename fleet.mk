# Fleet load simulation; included by the Makefile. docs/fleet.md explains
# the runs and their results.

.PHONY: bench-fleet
bench-fleet: ## Simulate fleets of 10, 50 and 200 agents on one real LAPI holding 100k decisions (about 10 min).
	$(GO) test -run '^$$' -bench '^BenchmarkFleet$$' -benchtime 1x -timeout 30m ./internal/fleet/ -args -fleet.n=10,50,200
