"""The resolve step: after parsing, look up what the flags name on this machine, in one place.

:func:`resolve` takes the pure :class:`~pwru.config.Config` that :func:`pwru.flags.build_config` made and
returns it with the network namespace inode (from a ``--filter-netns`` path), the interface index (from
``--filter-ifname``, looked up inside that namespace, else the current one) and checked file paths. Errors are
the usual one-line :class:`~pwru.config.FlagError` (``--flag: problem``, exit 2).

Also here, for the command line and the run loop to call before anything is loaded: whether standard output can
take the output (:func:`check_stdout`), whether libpcap can be loaded (:func:`check_libpcap`) and whether the
process holds the capabilities a run needs (:func:`check_privileges`).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import stat

from pwru import netns
from pwru.config import Config, FlagError
from pwru.errors import UserError

#: Config fields only this step fills (no flag does); the drift test in tests/unit/test_flags.py reads it.
FILLS: tuple[str, ...] = ("filter.ifindex",)


def netns_inode(path: str) -> int:
    """--filter-netns ``path`` -> the inode of the network namespace it names (32 bits, as the kernel side)."""
    try:
        inode = netns.netns_inode(path)
    except netns.NetnsError as e:
        raise FlagError("filter-netns", str(e)) from None
    if inode > 0xFFFFFFFF:
        raise FlagError("filter-netns", f"{path}: inode {inode} does not fit in 32 bits")
    return inode


def resolve_ifname(name: str, netns_inode: int | None, netns_path: str | None) -> tuple[int, int, str | None]:
    """--filter-ifname: look ``name`` up in the --filter-netns namespace, else the current one.

    Returns (ifindex, netns inode, netns path). An ``inode:N`` namespace is found through ``/run/netns`` or a
    process living in it.
    """
    if netns_inode is None:
        netns_path = "/proc/self/ns/net"
        netns_inode = netns.netns_inode(netns_path)
    elif netns_path is None:
        netns_path = netns.find_netns_path(netns_inode)
        if netns_path is None:
            raise FlagError(
                "filter-ifname",
                f"cannot look up {name!r}: no /run/netns entry or process found in netns inode {netns_inode}",
            )
    try:
        index = netns.ifindex(name, netns_path)
    except netns.NetnsError as e:
        raise FlagError("filter-ifname", str(e)) from None
    return index, netns_inode, netns_path


def check_existing_file(flag: str, path: str, max_size: int | None = None) -> str:
    """``path`` when it names an existing regular file (of at most ``max_size`` bytes).

    stat only: a FIFO or a device is refused here, before anything opens it (a FIFO's open would block, and
    /dev/zero never ends).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FlagError(flag, f"{path}: no such file") from None
    except OSError as e:
        raise FlagError(flag, f"{path}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise FlagError(flag, f"{path}: is a directory")
    if not stat.S_ISREG(st.st_mode):
        from pwru.ebpf.btf import file_kind  # here, not at the top: cli loads nothing of pwru.ebpf before dispatch

        raise FlagError(flag, f"{path}: not a regular file ({file_kind(st.st_mode)})")
    if max_size is not None and st.st_size > max_size:
        raise FlagError(flag, f"{path}: {st.st_size} bytes, more than the {max_size >> 20} MiB limit")
    return path


def check_output_path(flag: str, path: str) -> str:
    """``path`` when a file can be created there (its directory exists and takes new files: tried with a
    temporary file, which is the only way to know on /proc, /sys or a read-only mount) and, when it exists, it
    is a regular file that can be opened for writing (pwru renames, rotates and removes these files, so a
    device or a FIFO is refused)."""
    if os.path.isdir(path):
        raise FlagError(flag, f"{path}: is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FlagError(flag, f"{parent}: no such directory")
    if os.path.exists(path):
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise FlagError(flag, f"{path}: not a regular file")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
        except OSError as e:
            raise FlagError(flag, f"{path}: {e.strerror}") from None
    try:
        fd, probe = make_temp(parent, ".pwru-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FlagError(flag, f"{parent}: cannot create files there: {e.strerror}") from None
    return path


def make_temp(directory: str, prefix: str) -> tuple[int, str]:
    """A new file of ours in ``directory`` (``O_EXCL``, mode 0600): ``tempfile.mkstemp`` without importing
    tempfile, whose imports (shutil, random, ...) cost 1.5 s of start-up in the emulated lab."""
    for _ in range(100):
        path = os.path.join(directory, prefix + os.urandom(6).hex())
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", directory)


def check_stdout(closed_at_start: bool) -> None:
    """Raise :class:`UserError` (exit 2) when standard output cannot take the output: it was closed when pwru
    started (the command line then put /dev/null there, so that no file pwru opens takes descriptor 1), or it
    is open for reading only. A write that fails later (a full disk, a broken pipe) is reported when it
    happens."""
    if closed_at_start:
        raise UserError("standard output is closed (redirect it to a file, or use --output-file)")
    try:
        mode = fcntl.fcntl(1, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError as e:
        raise UserError(f"standard output: {e.strerror}") from None
    if mode == os.O_RDONLY:
        raise UserError("standard output is open for reading only (redirect it to a file, or use --output-file)")


def check_pcap_stdout(fd: int = 1) -> None:
    """--output-pcap -: refuse a terminal on standard output (pcapng is binary: pipe it into tshark or
    wireshark, or give a file). Exit 2."""
    if os.isatty(fd):
        raise FlagError("output-pcap", "standard output is a terminal (pipe it into `tshark -r -`, or name a file)")


def check_libpcap(config: Config) -> None:
    """Raise :class:`UserError` (exit 1) when a pcap expression is given and libpcap cannot be loaded."""
    f = config.filter
    if not any(e.strip() for e in (f.pcap, f.tunnel_pcap_l2, f.tunnel_pcap_l3)):
        return
    from pwru.filter import pcap  # loaded only when there is a filter to compile

    try:
        pcap.compile_cbpf("ip", pcap.DLT_RAW)
    except OSError as e:
        raise UserError(f"{e} (install libpcap: apt-get install libpcap0.8)", exit_code=1) from None


#: Capability numbers (linux/capability.h) a run needs.
CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 21, 38, 39
#: What each needed capability is, and the one that also grants it (CAP_SYS_ADMIN did all of BPF's and perf's
#: privileged work before Linux 5.8 split CAP_BPF and CAP_PERFMON out of it, and still does).
NEEDED_CAPS = (
    ("CAP_BPF", CAP_BPF, CAP_SYS_ADMIN),
    ("CAP_PERFMON", CAP_PERFMON, CAP_SYS_ADMIN),
    ("CAP_NET_ADMIN", CAP_NET_ADMIN, None),
)


def effective_caps(status: str = "/proc/self/status") -> int:
    """The process's effective capability set (``CapEff`` of ``/proc/self/status``), as a bit mask."""
    with open(status) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    raise OSError(f"{status}: no CapEff line")


def missing_caps(caps: int) -> list[str]:
    """The names of the capabilities a run needs that ``caps`` lacks."""
    def has(cap: int | None) -> bool:
        return cap is not None and bool(caps >> cap & 1)

    return [name for name, cap, alt in NEEDED_CAPS if not (has(cap) or has(alt))]


def check_privileges() -> None:
    """Raise :class:`UserError` (exit 1) unless the process holds CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (or
    CAP_SYS_ADMIN for the first two): checked on the capabilities, not the uid, so an unprivileged user granted
    them can run pwru, and root stripped of them is told why."""
    try:
        caps = effective_caps()
    except OSError as e:
        raise UserError(f"cannot read this process's capabilities: {e}", exit_code=1) from None
    missing = missing_caps(caps)
    if missing:
        raise UserError(
            f"missing privileges: this process lacks {', '.join(missing)} "
            "(run as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)",
            exit_code=1,
        )


def resolve(config: Config) -> Config:
    """``config`` with the netns inode, ifindex and path checks done; raises :class:`FlagError`."""
    f = config.filter
    inode, path = f.netns, f.netns_path
    if path is not None and inode is None:
        inode = netns_inode(path)
    ifindex = f.ifindex
    if f.ifname is not None:
        ifindex, inode, path = resolve_ifname(f.ifname, inode, path)
    if config.output.file is not None:
        check_output_path("output-file", config.output.file)
    pcap = config.output.pcap
    if pcap is not None and pcap != "-":
        check_output_path("output-pcap", pcap)
        if config.output.file is not None and os.path.realpath(pcap) == os.path.realpath(config.output.file):
            raise FlagError("output-pcap", f"{pcap}: is --output-file too (give each its own file)")
    if config.output.raw is not None:
        check_output_path("output-raw", config.output.raw)
    if config.kernel.kernel_btf is not None:
        from pwru.ebpf.btf import MAX_BTF_SIZE  # only when asked: see check_existing_file

        check_existing_file("kernel-btf", config.kernel.kernel_btf, MAX_BTF_SIZE)
    if config.ready_file is not None:
        check_output_path("ready-file", config.ready_file)
    return dataclasses.replace(config, filter=dataclasses.replace(f, netns=inode, netns_path=path, ifindex=ifindex))
