"""The BPF objects a process holds, from its descriptors' ``/proc/PID/fdinfo`` entries.

The kernel lists ``map_id:`` for a map descriptor and ``prog_id:`` for a program or link descriptor (a link
names the program it holds). Tests and benchmarks use it to find one pwru process's maps and programs among
everything loaded on the machine.
"""

from __future__ import annotations

from pathlib import Path


def held_ids(pid: int, field: str) -> set[int]:
    """Ids in the ``field:`` lines (``map_id``, ``prog_id``, ``link_id``) of process ``pid``'s descriptors."""
    prefix = f"{field}:"
    ids = set()
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fdinfo.read_text()
        except OSError:  # the descriptor was closed meanwhile
            continue
        for line in text.splitlines():
            if line.startswith(prefix):
                ids.add(int(line.split()[1]))
    return ids
