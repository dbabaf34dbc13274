"""Guest tests run only inside a kernel-lab VM (``PWRU_VM_GUEST=1``); on the host they are not collected."""

from __future__ import annotations

import os

if os.environ.get("PWRU_VM_GUEST") != "1":
    # They need root on a stock kernel and import pwru; the matrix runs them: pytest -m vm tests/vm
    collect_ignore_glob = ["test_*.py"]
