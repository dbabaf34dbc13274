"""A small, general, pure-Python eBPF library: syscall, instructions, BTF, ELF/CO-RE loading, maps,
programs, links and readers. Nothing in here knows about packets or pwru."""
