"""``pwru k8s``: create the run's Pod or DaemonSet, wait until every pod is ready, stream and merge their events,
delete what was made on every way out (the end of the streams, a failed pod, Ctrl-C, SIGTERM, an error).

Readiness is the pods' ``Ready`` condition, which the startup probe holds back until pwru made its ready file
(every probe attached); a line on standard error shows the progress whenever it changes, a pod that cannot start
(image pull, pwru exiting) ends the wait at once with its reason. Each pod's log is followed in a thread of its
own; :class:`~pwru.k8s.merge.Merger` writes the lines as they come, so the merged output keeps each node's order
(not a global time order). What was made carries the run's labels; a crash that skips the deletion leaves objects
that ``pwru k8s --cleanup`` deletes. The cluster is a :class:`~pwru.k8s.cluster.Cluster`: the Kubernetes API in
real use, anything with the same five calls in tests.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TextIO

from pwru.k8s import manifest as mf
from pwru.k8s.cluster import Cluster, K8sError, PodState
from pwru.k8s.merge import Merger
from pwru.k8s.options import K8sOptions, parse, usage

#: Seconds between two looks at the pods while waiting for them.
POLL = 1.0


@dataclass
class Runner:
    cluster: Cluster
    options: K8sOptions
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def say(self, text: str) -> None:
        self.err.write(f"pwru k8s: {text}\n")
        self.err.flush()

    @property
    def selector(self) -> str:
        return mf.run_selector(self.run_id)

    def manifest(self) -> mf.Manifest:
        o = self.options
        if o.node is not None:
            return mf.pod(mf.pod_name(o.node, self.run_id), o.node, self.run_id, o.image, o.pwru_args,
                          o.ready_timeout)  # fmt: skip
        return mf.daemonset(f"pwru-{self.run_id}", self.run_id, o.image, o.pwru_args, o.ready_timeout)

    def run(self) -> int:
        """The whole run; its exit status (0 when stopped by Ctrl-C or SIGTERM, 1 when a pod failed)."""
        o = self.options
        if o.cleanup:
            deleted = self.cluster.delete(o.namespace, mf.MANAGED_SELECTOR)
            self.say(f"deleted {', '.join(deleted)}" if deleted else f"nothing of pwru k8s in namespace {o.namespace}")
            return 0
        manifest = self.manifest()
        made_ready = False
        self.say(f"run {self.run_id}: creating {manifest['kind']} {o.namespace}/{manifest['metadata']['name']}")
        try:
            with _sigterm_interrupts():
                self.cluster.create(o.namespace, manifest)
                pods = self.wait_ready(manifest)
                if o.ready_file is not None:
                    with open(o.ready_file, "w"):
                        made_ready = True
                self.say(f"{len(pods)} pod(s) ready, streaming (Ctrl-C stops and deletes them)")
                return self.stream(pods)
        except KeyboardInterrupt:
            return 0
        finally:
            self.delete()
            if made_ready and o.ready_file is not None:
                with contextlib.suppress(OSError):
                    os.unlink(o.ready_file)

    def delete(self) -> None:
        try:
            deleted = self.cluster.delete(self.options.namespace, self.selector)
        except (K8sError, OSError) as e:
            self.say(f"could not delete the run's objects ({e}); `pwru k8s --cleanup` deletes them")
            return
        if deleted:
            self.say(f"deleted {', '.join(deleted)}")

    def wait_ready(self, manifest: mf.Manifest) -> list[PodState]:
        """Every pod of the run, once all are ready (or pwru in them already ended well)."""
        ns, timeout = self.options.namespace, self.options.ready_timeout
        deadline = self.clock() + timeout
        shown = ""
        while True:
            states = sorted(self.cluster.pods(ns, self.selector), key=lambda s: (s.node, s.name))
            for s in states:
                if s.failure:
                    raise K8sError(f"pod {s.name} on node {s.node or '(none yet)'}: {s.failure}")
            want = self.cluster.desired(ns, manifest)
            if want == 0:
                raise K8sError("the DaemonSet wants no pod: no node it may run on")
            done = [s for s in states if s.ready or s.exit_code == 0]
            if want is not None and len(done) >= want:
                return done
            line = progress(states, want)
            if line != shown:
                self.say(line)
                shown = line
            if self.clock() >= deadline:
                raise K8sError(f"not ready within {timeout} s: {line}")
            self.sleep(POLL)

    def stream(self, pods: Sequence[PodState]) -> int:
        """Follow every pod's log into the merged output until all end; the exit status from the pods' ends."""
        o = self.options
        merger = Merger(self.out, self.err, o.json, o.meta, o.tuple, max(len(p.node) for p in pods))
        lines: queue.Queue[tuple[PodState, str | BaseException | None]] = queue.Queue(maxsize=10000)
        for p in pods:
            threading.Thread(target=_follow, args=(self.cluster, o.namespace, p, lines), daemon=True).start()
        open_ = len(pods)
        while open_:
            try:
                pod, item = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(item, str):
                merger.line(pod.node, item)
            elif item is None:
                open_ -= 1
            else:
                open_ -= 1
                self.say(f"log of {pod.name} on {pod.node}: {item}")
        final = {s.name: s for s in self.cluster.pods(o.namespace, self.selector)}
        status = 0
        for p in pods:
            s = final.get(p.name)
            if s is not None and s.failure:
                self.say(f"pod {s.name} on node {s.node}: {s.failure}")
                status = 1
        return status


def _follow(cluster: Cluster, namespace: str, pod: PodState,
            lines: queue.Queue[tuple[PodState, str | BaseException | None]]) -> None:  # fmt: skip
    try:
        for line in cluster.logs(namespace, pod.name):
            lines.put((pod, line))
    except Exception as e:  # the stream broke: said once, the other nodes go on
        lines.put((pod, e))
        return
    lines.put((pod, None))


def progress(states: Sequence[PodState], want: int | None) -> str:
    """``2/3 pods ready; waiting: node-c (ContainerCreating)``."""
    ready = sum(s.ready for s in states)
    total = "?" if want is None else str(want)
    waiting = [f"{s.node or s.name} ({s.waiting or s.phase})" for s in states if not s.ready]
    if want is not None and len(states) < want:
        waiting.append(f"{want - len(states)} not created yet")
    return f"{ready}/{total} pods ready" + (f"; waiting: {', '.join(waiting)}" if waiting else "")


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread while the run lasts, so the deletion runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str]) -> int:
    """``pwru k8s ...`` (the words after ``k8s``): bad input is refused (UserError, exit 2) before any call."""
    options = parse(argv)
    if options.help:
        sys.stdout.write(usage())
        return 0
    from pwru.k8s.cluster import KubeCluster

    cluster = KubeCluster(options.kubeconfig, options.context)
    return Runner(cluster, options).run()
