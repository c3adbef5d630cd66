# Kernel matrix and Vagrant targets; included by the Makefile.
# docs/kernels.md explains both.

.PHONY: test-vm
test-vm: ## Run the kernel tests on Debian's 5.10, 6.1 and 6.12 kernels under qemu and on the host kernel (root).
	GO=$(GO) scripts/vm/matrix.sh

.PHONY: vagrant-test
vagrant-test: ## Run `make test` in Vagrant boxes: Debian 12, Ubuntu 22.04, Ubuntu 24.04 (needs a hypervisor).
	scripts/vm/vagrant-test.sh
