"""``pwru k8s``: its arguments, manifests (against the Kubernetes schemas), pod states (the client's real model
objects), merging, and the runner end to end through the official client against a Kubernetes API on loopback
(tests/k8s_apiserver.py: no cluster can be had here), ``pwru k8s`` itself run as a process for Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes import client as k8s

from pwru import flags
from pwru.errors import UserError
from pwru.k8s import manifest as mf
from pwru.k8s.cluster import K8sError, KubeCluster, desired_pods, import_client, pod_state
from pwru.k8s.merge import Merger
from pwru.k8s.options import K8S_FLAGS, parse
from pwru.k8s.runner import Runner, progress

from ..k8s_apiserver import PULL_FAILED, READY, FakeApiServer, Script, exited

ROOT = Path(__file__).resolve().parents[2]
#: The Kubernetes versions the manifests are checked against (kubernetes-validate ships their schemas).
K8S_VERSIONS = ("1.27.0", "1.30.0", kubernetes_validate.utils.latest_version())

DROP = {"skb": "0xffff888167b1cc00", "cpu": 1, "process": "python3:28096",
        "func": "tp:kfree_skb(SKB_DROP_REASON_NO_SOCKET)", "reason": "SKB_DROP_REASON_NO_SOCKET",
        "netns": 4026532184, "iface": "lo:1", "proto": 2048, "mtu": 65536, "len": 9,
        "tuple": {"saddr": "127.0.0.1", "daddr": "127.0.0.1", "sport": 48232, "dport": 9, "proto": 17}}  # fmt: skip


# --- arguments ---


def test_k8s_flags_are_none_of_pwrus() -> None:
    assert not set(K8S_FLAGS) & {f.name for f in flags.FLAGS}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "--node NAME or --all-nodes"),
        (("--node", "a", "--all-nodes"), "not both"),
        (("--node", "a", "--nosuchflag"), "--nosuchflag: unknown flag"),
        (("--node", "a", "--backend", "nope"), "--backend"),
        (("--node", "a", "--filter-mark", "x"), "--filter-mark"),
        (("--node", "Bad_Name"), "--node"),
        (("--node",), "--node: needs a value"),
        (("--node", "a", "--namespace", "Not/Valid"), "--namespace"),
        (("--node", "a", "--pod-ready-timeout", "0"), "--pod-ready-timeout"),
        (("--node", "a", "--output-file", "x"), "--output-file"),
        (("--node", "a", "--output-pcap", "-"), "--output-pcap"),
        (("--all-nodes", "--list-funcs"), "--list-funcs"),
        (("--cleanup", "--all-nodes"), "--cleanup"),
        (("--all-nodes=yes",), "--all-nodes"),
    ],
)
def test_bad_arguments(args: tuple[str, ...], needle: str) -> None:
    with pytest.raises(UserError) as e:
        parse(args)
    assert e.value.exit_code == 2 and needle in str(e.value) and "\n" not in str(e.value)


def test_arguments_split_between_k8s_and_pwru() -> None:
    o = parse(["--output-json", "--node=n1.example", "--namespace", "debug", "--ready-file", "/tmp/r",
               "--filter-mark", "0x1", "--", "udp", "--node"])  # fmt: skip
    assert (o.node, o.all_nodes, o.namespace, o.json, o.ready_file) == ("n1.example", False, "debug", True, "/tmp/r")
    # --ready-file is the runner's; the words after -- stay words (even one that looks like a k8s flag)
    assert o.pwru_args == ("--output-json", "--filter-mark", "0x1", "--", "udp", "--node")
    assert parse(["--cleanup"]).cleanup and parse(["--help"]).help


def test_cli_k8s_bad_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from pwru import cli

    assert cli.main(["k8s", "--all-nodes", "--node", "x"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("pwru: ")


def test_no_kubernetes_client_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pwru import cli

    monkeypatch.setitem(sys.modules, "kubernetes", None)  # import kubernetes -> ImportError
    with pytest.raises(UserError) as e:
        import_client()
    assert e.value.exit_code == 2 and "pwru[k8s]" in str(e.value)
    assert cli.main(["k8s", "--node", "n1", "udp"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "pwru: pwru k8s needs the kubernetes client: pip install 'pwru[k8s]'\n"


# --- manifests ---


def _manifests() -> list[mf.Manifest]:
    args = ("--output-meta", "--filter-func", "kfree_skb", "--", "dst port 53")
    return [
        mf.pod(mf.pod_name("n1", "abcd1234"), "n1", "abcd1234", "reg.example/pwru:1", args, 60),
        mf.pod(mf.pod_name("a" * 70 + ".b", "abcd1234"), "a" * 70 + ".b", "abcd1234", "pwru", (), 300),
        mf.daemonset("pwru-abcd1234", "abcd1234", "pwru", args, 120),
        *mf.examples().values(),
    ]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    for m in _manifests():
        kubernetes_validate.validate(m, version, strict=True)  # raises ValidationError


def test_schema_check_can_fail() -> None:
    bad = mf.pod("p", "n", "r", "i", (), 60)
    bad["spec"]["hostNetwork"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_pod_manifest_contents() -> None:
    m = mf.pod(mf.pod_name("n1", "r1"), "n1", "r1", "img", ("--", "udp"), 60)
    spec, c = m["spec"], m["spec"]["containers"][0]
    assert (spec["nodeName"], spec["hostNetwork"], spec["hostPID"]) == ("n1", True, True)
    assert spec["restartPolicy"] == "Never"
    assert c["securityContext"] == {"privileged": True}
    assert c["args"] == ["--output-json", "--ready-file", mf.READY_FILE, "--", "udp"]
    assert c["startupProbe"]["exec"]["command"] == ["test", "-e", mf.READY_FILE]
    assert {v["hostPath"]["path"] for v in spec["volumes"]} == {"/sys/kernel", "/sys/fs/bpf", "/run/netns"}
    assert m["metadata"]["labels"][mf.LABEL_RUN] == "r1"
    assert len(mf.pod_name("x" * 300, "r1")) <= 63


def test_deploy_k8s_files_are_what_the_code_makes() -> None:
    for name, m in mf.examples().items():
        assert yaml.safe_load((ROOT / "deploy" / "k8s" / name).read_text()) == m, name


# --- pod states from the client's model objects ---


def _pod(phase: str, state: k8s.V1ContainerState | None = None, ready: bool = False, restarts: int = 0,
         last: k8s.V1ContainerState | None = None) -> k8s.V1Pod:  # fmt: skip
    conditions = [k8s.V1PodCondition(type="Ready", status="True" if ready else "False")]
    statuses = None
    if state is not None:
        statuses = [k8s.V1ContainerStatus(name="pwru", ready=ready, restart_count=restarts, image="i", image_id="",
                                          state=state, last_state=last)]  # fmt: skip
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="p1"),
        spec=k8s.V1PodSpec(node_name="n1", containers=[k8s.V1Container(name="pwru")]),
        status=k8s.V1PodStatus(phase=phase, conditions=conditions, container_statuses=statuses),
    )


def test_pod_states() -> None:
    waiting = k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason="ContainerCreating"))
    s = pod_state(_pod("Pending", waiting))
    assert (s.node, s.ready, s.waiting, s.failure) == ("n1", False, "ContainerCreating", "")
    running = k8s.V1ContainerState(running=k8s.V1ContainerStateRunning())
    assert pod_state(_pod("Running", running, ready=True)).ready
    pull = k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason="ImagePullBackOff", message="no such"))
    assert pod_state(_pod("Pending", pull)).failure == "ImagePullBackOff: no such"
    term = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=2, reason="Error"))
    s = pod_state(_pod("Failed", term))
    assert (s.failure, s.exit_code) == ("pwru exited 2 (Error)", 2)
    said = k8s.V1ContainerStateTerminated(exit_code=2, reason="Error",
                                          message="Attaching...\npwru: invalid pcap filter 'tcp port': syntax error\n")
    assert pod_state(_pod("Failed", k8s.V1ContainerState(terminated=said))).failure == (
        "pwru exited 2 (Error): pwru: invalid pcap filter 'tcp port': syntax error"
    )
    done = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=0, reason="Completed"))
    assert pod_state(_pod("Succeeded", done)).failure == ""
    crash = k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason="CrashLoopBackOff"))
    assert pod_state(_pod("Running", crash, restarts=3, last=term)).failure.startswith("CrashLoopBackOff")
    assert "restarted 1" in pod_state(_pod("Running", running, restarts=1, last=term)).failure
    assert pod_state(k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="p"))).phase == "Pending"


def test_daemonset_desired() -> None:
    spec = k8s.V1DaemonSetSpec(
        selector=k8s.V1LabelSelector(match_labels={"a": "b"}),
        template=k8s.V1PodTemplateSpec(spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="pwru")])),
    )
    ds = k8s.V1DaemonSet(metadata=k8s.V1ObjectMeta(name="d"), spec=spec)
    assert desired_pods(ds) is None
    ds.status = k8s.V1DaemonSetStatus(current_number_scheduled=0, desired_number_scheduled=3, number_misscheduled=0,
                                      number_ready=0, observed_generation=1)  # fmt: skip
    assert desired_pods(ds) == 3


def test_progress_line() -> None:
    creating = k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason="ContainerCreating"))
    s = pod_state(_pod("Pending", creating))
    assert progress([s], 3) == "0/3 pods ready; waiting: n1 (ContainerCreating), 2 not created yet"
    assert progress([], None) == "0/? pods ready"


# --- merging ---


def test_merge_json_adds_the_node_and_sends_other_lines_to_stderr() -> None:
    out, err = io.StringIO(), io.StringIO()
    m = Merger(out, err, json_out=True)
    m.line("n1", "Attaching 30 tracepoints (tracepoint)...")
    m.line("n1", json.dumps(DROP))
    m.line("n2", '{"broken')
    assert [json.loads(x) for x in out.getvalue().splitlines()] == [{**DROP, "node": "n1"}]
    assert err.getvalue() == "[n1] Attaching 30 tracepoints (tracepoint)...\n[n2] {\"broken\n"


def test_merge_text_columns() -> None:
    out = io.StringIO()
    m = Merger(out, io.StringIO(), json_out=False, node_width=5)
    m.line("n1", json.dumps(DROP))
    m.line("node2", json.dumps({**DROP, "stack": "\nfoo+0x1\nbar+0x2"}))
    header, first, *rest = out.getvalue().splitlines()
    assert header.split() == ["NODE", "SKB", "CPU", "PROCESS", "NETNS", "MARK/x", "IFACE", "PROTO", "MTU", "LEN",
                              "TUPLE", "FUNC"]  # fmt: skip
    assert first.split() == ["n1", "0xffff888167b1cc00", "1", "python3:28096", "4026532184", "0", "lo:1", "0x0800",
                             "65536", "9", "127.0.0.1:48232->127.0.0.1:9(udp)", DROP["func"]]  # fmt: skip
    assert rest[0].startswith("node2 ") and rest[-2:] == ["foo+0x1", "bar+0x2"]


# --- the runner through the real client, against the API on loopback ---


def _runner(api: FakeApiServer, tmp_path: Path, *args: str) -> tuple[Runner, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    cluster = KubeCluster(str(api.kubeconfig(tmp_path / "kubeconfig")))
    r = Runner(cluster, parse(args), out, err, sleep=lambda s: time.sleep(0.01))
    return r, out, err


def test_runner_all_nodes_waits_merges_and_deletes(tmp_path: Path) -> None:
    lines = {n: ["Listening for events..", json.dumps({**DROP, "cpu": i})] for i, n in enumerate(("n1", "n2", "n3"))}
    scripts = {n: Script(lines=ls, after_lines=exited(0)) for n, ls in lines.items()}
    scripts["n3"].statuses = [{"phase": "Pending"}, *scripts["n3"].statuses]  # the slow one
    with FakeApiServer(scripts) as api:
        r, out, err = _runner(api, tmp_path, "--all-nodes", "--output-json", "--ready-file", str(tmp_path / "ready"))
        assert r.run() == 0
        events = [json.loads(x) for x in out.getvalue().splitlines()]
        assert sorted((e["node"], e["cpu"]) for e in events) == [("n1", 0), ("n2", 1), ("n3", 2)]
        text = err.getvalue()
        assert "0/3 pods ready" in text and "3 pod(s) ready" in text and "[n2] Listening for events.." in text
        assert api.deleted == [f"daemonsets/pwru-{r.run_id}"] and not api.pods and not api.daemonsets
        posted = [p for m, p in api.requests if m == "POST"]
        assert posted == ["/apis/apps/v1/namespaces/default/daemonsets"]
        assert not (tmp_path / "ready").exists()  # made when ready, removed at the end


def test_runner_failed_pod_ends_the_wait_and_deletes(tmp_path: Path) -> None:
    with FakeApiServer({"n1": Script(statuses=[PULL_FAILED])}) as api:
        r, out, _err = _runner(api, tmp_path, "--node", "n1", "--image", "nosuch/pwru")
        with pytest.raises(K8sError) as e:
            r.run()
        assert e.value.exit_code == 1 and "ErrImagePull: pull access denied" in str(e.value)
        assert api.deleted == [f"pods/{mf.pod_name('n1', r.run_id)}"] and not api.pods
        assert out.getvalue() == ""


def test_runner_pwru_failing_in_the_pod_is_exit_1(tmp_path: Path) -> None:
    script = Script(statuses=[READY], lines=["pwru: --backend kprobe: not available"], after_lines=exited(1))
    with FakeApiServer({"n1": script}) as api:
        r, _, err = _runner(api, tmp_path, "--node", "n1", "udp")
        assert r.run() == 1
        assert "[n1] pwru: --backend kprobe" in err.getvalue() and "pwru exited 1" in err.getvalue()
        assert not api.pods


def test_cleanup_deletes_every_run(tmp_path: Path) -> None:
    with FakeApiServer({"n1": Script(), "n2": Script()}) as api:
        api.add_pod(mf.pod("pwru-n1-aaaa", "n1", "aaaa", "i", (), 60), "n1")
        api.daemonsets["pwru-bbbb"] = mf.daemonset("pwru-bbbb", "bbbb", "i", (), 60)
        api.add_pod({"metadata": {"name": "pwru-bbbb-n2", "labels": mf.labels("bbbb")}, "spec": {"containers": []}},
                    "n2", owner="pwru-bbbb")  # fmt: skip
        api.add_pod({"metadata": {"name": "other", "labels": {"app": "x"}}, "spec": {"containers": []}}, "n2")
        r, _, _err = _runner(api, tmp_path, "--cleanup")
        assert r.run() == 0
        assert sorted(api.deleted) == ["daemonsets/pwru-bbbb", "pods/pwru-n1-aaaa"]
        assert list(api.pods) == ["other"]


def test_unreachable_api_server_is_one_error(tmp_path: Path) -> None:
    with FakeApiServer({}) as api:
        path = api.kubeconfig(tmp_path / "kubeconfig")
    r = Runner(KubeCluster(str(path)), parse(["--node", "n1"]), io.StringIO(), io.StringIO())
    with pytest.raises(K8sError) as e:
        r.run()
    assert "create Pod" in str(e.value)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_delete_the_run(tmp_path: Path, sig: int) -> None:
    """``pwru k8s`` as a process: streaming a pod whose log stays open; the signal ends it and it deletes the pod."""
    script = Script(statuses=[READY], lines=[json.dumps(DROP)], hold=True)
    with FakeApiServer({"n1": script}) as api:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
        ready = tmp_path / "ready"
        cmd = [sys.executable, "-m", "pwru", "k8s", "--kubeconfig", str(api.kubeconfig(tmp_path / "kc")),
               "--node", "n1", "--ready-file", str(ready), "--output-json"]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the event came through: streaming
        assert json.loads(first)["node"] == "n1" and ready.exists()
        assert not api.deleted
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert len(api.deleted) == 1 and api.deleted[0].startswith("pods/pwru-n1-") and not api.pods
        assert "Traceback" not in err and not ready.exists()


def test_runner_streams_while_another_node_is_silent(tmp_path: Path) -> None:
    """One node's lines come out while another's log stays open with nothing: the merge is not in lockstep."""
    scripts = {"n1": Script(statuses=[READY], lines=[json.dumps(DROP)] * 3, after_lines=exited(0)),
               "n2": Script(statuses=[READY], hold=True)}  # fmt: skip
    with FakeApiServer(scripts) as api:
        r, out, _ = _runner(api, tmp_path, "--all-nodes", "--output-json")
        t = threading.Thread(target=r.run, daemon=True)
        t.start()
        deadline = time.monotonic() + 20
        while out.getvalue().count("\n") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out.getvalue().count('"node":"n1"') == 3
        scripts["n2"].hold = False
        t.join(20)
        assert not t.is_alive() and not api.daemonsets
