"""The container image and ``pwru k8s``'s Pod, run for real with podman on this machine (slow: the image is built).

- ``deploy/build-image`` builds the image (a base from Debian packages by mmdebstrap, cached in .cache/deploy for
  the rest of the run; the wheels built on the host); its size and the build's time are printed.
- The image runs as the docs say (``--privileged --pid=host --net=host`` and the mounts) and traces a real drop:
  UDP to a closed port inside a network namespace the test made; the drop event comes with its reason; the
  container's start (to pwru's ready file) is timed; nothing of pwru's stays in the kernel afterwards.
- The Pod manifest ``pwru k8s --node`` makes is run with ``podman kube play`` and read through the runner's own
  code (:class:`pwru.k8s.runner.Runner`): readiness, the merged stream with the node's name, the deletion on
  Ctrl-C. The cluster side is :class:`PodmanCluster`: ``podman kube play`` / ``kube down`` for the API's create and
  delete, ``podman logs -f`` for the API's log stream, the manifest's startup probe command run with ``podman
  exec`` for the Ready condition. podman does not honour ``hostPID`` (the container has its own PID namespace),
  which the traced drop does not need.

podman facts on these machines: crun refuses the hybrid cgroups (``--runtime runc``), and the default ulimits
cannot be set (a containers.conf with lower ``default_ulimits``, through CONTAINERS_CONF).
"""

from __future__ import annotations

import _thread
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pwru.k8s import manifest as mf
from pwru.k8s.cluster import PodState
from pwru.k8s.options import parse
from pwru.k8s.runner import Runner

from .conftest import Netns, left_behind, pwru_bpf_objects, udp_send

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/pwru:test"
RUNTIME = ("--runtime", "runc")
#: The mounts docs/deploy.md names: kernel BTF, tracing and debugfs (under /sys/kernel), bpffs, named netns.
MOUNTS = ("-v", "/sys/kernel:/sys/kernel", "-v", "/sys/fs/bpf:/sys/fs/bpf", "-v", "/run/netns:/run/netns:ro")
DROP_REASON = "SKB_DROP_REASON_NO_SOCKET"


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if shutil.which("podman") is None or shutil.which("runc") is None or shutil.which("mmdebstrap") is None:
        pytest.skip("podman, runc and mmdebstrap are needed (.ci/run installs them)")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n')
    return dict(os.environ, CONTAINERS_CONF=str(conf))


@pytest.fixture(scope="module")
def image(podman_env: dict[str, str]) -> str:
    env = dict(podman_env, PWRU_BASE_CACHE=str(ROOT / ".cache" / "deploy"))
    if (ROOT / ".venv" / "bin" / "python").exists():
        env.setdefault("PWRU_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    else:
        import sys

        env.setdefault("PWRU_PYTHON", sys.executable)
    t0 = time.monotonic()
    r = subprocess.run([str(ROOT / "deploy" / "build-image"), TAG], capture_output=True, text=True, env=env,
                       timeout=600, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr
    tag, size = r.stdout.split()
    print(f"\nimage {tag}: {int(size) / 1e6:.1f} MB, built in {time.monotonic() - t0:.1f} s\n{r.stderr}")
    assert tag == TAG and int(size) < 150e6  # 128 MB on Debian 12
    return TAG


def podman(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *RUNTIME, *args], capture_output=True, text=True, env=env, check=check,
                          timeout=timeout)  # fmt: skip


def _drop_events(lines: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    return [e for e in lines if e.get("reason") == DROP_REASON and e.get("tuple", {}).get("dport") == port]


def test_image_runs_pwru_and_traces_a_drop(image: str, podman_env: dict[str, str], netns: Netns,
                                           tmp_path: Path) -> None:  # fmt: skip
    before = pwru_bpf_objects()
    name = f"pwru-test-{os.getpid()}"
    out = tmp_path / "out"
    out.mkdir()
    t0 = time.monotonic()
    cmd = ["podman", *RUNTIME, "run", "--rm", "--name", name, "--privileged", "--pid=host", "--net=host", *MOUNTS,
           "-v", f"{out}:/out", image, "--output-json", "--ready-file", "/out/ready",
           "--filter-netns", f"inode:{netns.inode}", "udp and dst port 9"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=podman_env)
    try:
        while not (out / "ready").exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() - t0 < 120, "pwru in the container not ready in 120 s"
            time.sleep(0.05)
        started = time.monotonic() - t0
        udp_send(netns, "127.0.0.1", 9, count=3)
        time.sleep(1)
        podman(podman_env, "stop", "--time", "20", name)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            podman(podman_env, "rm", "--force", name, check=False)
            proc.communicate()
    print(f"\ncontainer start to pwru ready: {started:.2f} s")
    events = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    drops = _drop_events(events, 9)
    assert drops, f"no drop event:\n{stdout[-2000:]}\n{stderr[-2000:]}"
    assert all(e["netns"] == netns.inode for e in drops) and "kfree_skb" in drops[0]["func"]
    assert proc.returncode == 0, stderr
    assert left_behind(before) == set()


class PodmanCluster:
    """:class:`pwru.k8s.cluster.Cluster` on podman: a pod manifest played for real (see the module's docstring)."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.played: dict[str, tuple[Path, mf.Manifest]] = {}  # pod name -> (manifest file, manifest)
        self.calls: list[str] = []

    def _container(self, pod: str) -> str:
        return f"{pod}-{mf.CONTAINER}"

    def create(self, namespace: str, manifest: mf.Manifest) -> None:
        assert manifest["kind"] == "Pod", "podman plays no DaemonSet"
        name = manifest["metadata"]["name"]
        path = self.tmp / f"{name}.yaml"
        path.write_text(json.dumps(manifest))  # JSON is YAML
        self.calls.append(f"create {name}")
        podman(self.env, "kube", "play", str(path))
        self.played[name] = (path, manifest)

    def pods(self, namespace: str, selector: str) -> list[PodState]:
        states = []
        for name, (_, manifest) in self.played.items():
            if mf.run_selector(manifest["metadata"]["labels"][mf.LABEL_RUN]) != selector:
                continue
            c = self._container(name)
            r = podman(self.env, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", c, check=False)
            if r.returncode != 0:
                continue
            status, code = r.stdout.split()
            probe = manifest["spec"]["containers"][0]["startupProbe"]["exec"]["command"]
            ready = status == "running" and podman(self.env, "exec", c, *probe, check=False).returncode == 0
            exit_code = int(code) if status == "exited" else None
            failure = f"pwru exited {exit_code}" if exit_code else ""
            states.append(PodState(name, manifest["spec"]["nodeName"], status, ready, "", failure, exit_code))
        return states

    def desired(self, namespace: str, manifest: mf.Manifest) -> int | None:
        return 1

    def logs(self, namespace: str, pod: str) -> Iterator[str]:
        proc = subprocess.Popen(["podman", "logs", "--follow", self._container(pod)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=self.env)  # fmt: skip
        assert proc.stdout is not None
        try:
            yield from proc.stdout
        finally:
            proc.kill()
            proc.wait()

    def delete(self, namespace: str, selector: str) -> list[str]:
        done = []
        for name, (path, manifest) in list(self.played.items()):
            if mf.run_selector(manifest["metadata"]["labels"][mf.LABEL_RUN]) == selector:
                podman(self.env, "kube", "down", str(path))
                del self.played[name]
                done.append(f"pod/{name}")
        self.calls += [f"delete {d}" for d in done]
        return done


def test_kube_play_of_the_node_pod_through_the_runner(image: str, podman_env: dict[str, str], netns: Netns,
                                                      tmp_path: Path) -> None:  # fmt: skip
    before = pwru_bpf_objects()
    node = socket.gethostname().lower()
    ready = tmp_path / "ready"
    options = parse(["--node", node, "--image", image, "--pod-ready-timeout", "120", "--output-json",
                     "--ready-file", str(ready), "--filter-netns", f"inode:{netns.inode}",
                     "udp and dst port 9"])  # fmt: skip
    cluster = PodmanCluster(podman_env, tmp_path)
    out, err = io.StringIO(), io.StringIO()
    runner = Runner(cluster, options, out, err)
    seen = threading.Event()
    t0 = time.monotonic()
    timing: dict[str, float] = {}

    def traffic() -> None:  # plays the user: waits for the ready file, sends, sees the drop, presses Ctrl-C
        try:
            while not ready.exists() and time.monotonic() - t0 < 150:
                time.sleep(0.05)
            timing["ready"] = time.monotonic() - t0
            for _ in range(100):
                udp_send(netns, "127.0.0.1", 9)
                if '"node":' in out.getvalue() and DROP_REASON in out.getvalue():
                    seen.set()
                    break
                time.sleep(0.2)
        finally:
            _thread.interrupt_main()

    helper = threading.Thread(target=traffic, daemon=True)
    helper.start()
    try:
        status = runner.run()
    finally:
        helper.join(30)
        for path, _ in list(cluster.played.values()):
            podman(podman_env, "kube", "down", str(path), check=False)
    print(f"\nkube play to all pods ready: {timing.get('ready', -1):.2f} s\n{err.getvalue()}")
    assert seen.is_set(), f"no drop came through the runner:\n{out.getvalue()[-2000:]}\n{err.getvalue()}"
    assert status == 0
    events = [json.loads(x) for x in out.getvalue().splitlines()]
    drops = _drop_events(events, 9)
    assert drops and all(e["node"] == node for e in events)
    assert cluster.calls[0].startswith("create pwru-") and cluster.calls[-1].startswith("delete pod/pwru-")
    assert "1 pod(s) ready" in err.getvalue() and not ready.exists()
    assert podman(podman_env, "ps", "-a", "--filter", f"label={mf.LABEL_RUN}={runner.run_id}", "-q").stdout == ""
    assert left_behind(before) == set()
