// Package bpf holds the xdpgate XDP program (xdpgate.c) and the Go bindings
// bpf2go generates for it. The generated files are committed, so building
// xdpgate needs no clang; `make generate` rebuilds them.
package bpf

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -Wno-unused-command-line-argument $BPF_CFLAGS" -target bpfel -type ban -type lpm_v4_key -type lpm_v6_key -type v4_addr -type v6_addr -type allow -type counter -type origin_name -type exact_v4_bucket Xdpgate xdpgate.c
