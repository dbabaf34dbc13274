"""pwru: packet, where are you? A Linux kernel networking debugger built on eBPF."""

__version__ = "0.1.0"
