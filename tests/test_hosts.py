"""The pipeline across real hosts: network namespaces on a private bridge (tests/hosts.py), a Ray
head and four workers each with its own IP, a client host with none. Jobs are submitted from the
client (`ray job submit`), other runs start on the head as a user logged in there would start them
(`python -m ray_al train ray.address=HEAD:6379`), and faults are made for real: a host's processes
killed, its link cut, its link slowed.

Run folders and checkpoints live in pytest's tmp_path, on the filesystem every host shares (the
stand-in for a cluster's shared storage). Every run is compared bitwise with `al_local` in this
process: its final checkpoint (parameters, both optimizers, step counts, RNG) against the
reference's state; block replicas (ray.replicas_per_block=2, one actor per worker host) within the
tolerance of tests/test_replicas.py.
"""
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from ray_al.checkpoint.files import complete_checkpoints, read_block, read_manifest
from ray_al.config import load_config
from ray_al.run.loop import train
from tests.headnode import logs, status, submit, wait_for
from tests.helpers import REPLICA_TOL, FaultInjector, assert_states_equal, replica_placements
from tests.hosts import FAST_FAILURE_DETECTION, hosts_for_tests

pytestmark = pytest.mark.slow
WORKERS = 4  # the replica test puts its 2 blocks x 2 replicas on 4 hosts (STRICT_SPREAD)
RUN = ["data.source=digits", "model.d=64", "model.target_warmup_steps=0", "optim.lr=1e-3", "train.chunk_size=2",
       "train.threads=1", "train.seed=3", "ray.placement_strategy=STRICT_SPREAD", "ray.num_cpus_per_block=1",
       "ray.placement_timeout_s=30", "train.log_every_s=0"]
STEPS_PER_EPOCH = 44          # 1,437 digits in batches of 32
PLACED = re.compile(r"^block (\d+): node (\w+) \([^,]*, ([\d.]+)\) pid (\d+)")
EPOCHS, EVERY = 4, 20       # the fault runs: 176 steps, a checkpoint every 20
FAULTY = [f"checkpoint.every_steps={EVERY}"]
# With FAST_FAILURE_DETECTION the head declares a cut-off host dead about 3 s after the cut; the
# driver must notice within DETECTION_BOUND_S and the run end (recovered or failed) within
# PARTITION_BOUND_S. Generous, for a loaded machine; both measured figures are printed.
LINK_DOWN_S, DETECTION_BOUND_S, PARTITION_BOUND_S = 15.0, 30.0, 120.0


@pytest.fixture(scope="module")
def hosts():
    h = hosts_for_tests(workers=WORKERS, env_extra=FAST_FAILURE_DETECTION)
    try:
        yield h
    finally:
        h.close()
    assert not h.leftovers()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """reference(epochs): block states and history of al_local after `epochs` epochs of the same
    run, in this process (computed once per epoch count)."""
    cache = {}

    def states(epochs: int):
        if epochs not in cache:
            torch.set_num_threads(1)  # the actors use train.threads=1 too
            cfg = load_config(None, [*RUN, "train.trainer=al_local", f"train.epochs={epochs}",
                                     "checkpoint.enabled=false", f"run_dir={tmp_path_factory.mktemp('local')}"])
            result = train(cfg, log=lambda line: None, keep_trainer=True)
            cache[epochs] = (result.trainer.state_dicts(), result.history)
        return cache[epochs]
    return states


def final_states(run_dir: Path) -> list[dict]:
    manifest = read_manifest(str(run_dir))
    return [read_block(str(run_dir), manifest, i) for i in range(len(manifest["blocks"]))]


def assert_bitwise_equal_to_reference(reference, run_dir: Path, epochs: int) -> None:
    states, _ = reference(epochs)
    assert complete_checkpoints(str(run_dir))[-1] == epochs * STEPS_PER_EPOCH
    got = final_states(run_dir)
    assert len(got) == len(states) == 2
    for i, (a, b) in enumerate(zip(got, states)):
        assert_states_equal(a, b, f"block {i + 1}")


def placements(text: str) -> list[tuple[int, str]]:
    """(block, node IP) of every placement line, in order (a restart prints a new set)."""
    return [(int(m.group(1)), m.group(3)) for line in text.splitlines() if (m := PLACED.match(line))]


def run_on_head(hosts, tmp_path, name: str, epochs: int, *extra: str, fault=None, timeout: float = 300):
    """`python -m ray_al train` on the head; its lines go to `fault.log` as they come. Returns the exit
    code, the output and (time seen, line) for every line."""
    log = tmp_path / f"{name}.log"
    proc = hosts.train(*RUN, f"train.epochs={epochs}", f"run_dir={tmp_path}", f"name={name}", *extra, log=log)
    stamped: list[tuple[float, str]] = []

    def follow():
        while True:
            done = proc.poll() is not None
            text = log.read_text()
            complete = text if done else text[:text.rfind("\n") + 1]  # never half a line
            for line in complete.splitlines()[len(stamped):]:
                stamped.append((time.time(), line))
                if fault:
                    fault.log(line)
            if done:
                return
            time.sleep(0.01)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        rc = proc.wait(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    follower.join()
    return rc, log.read_text(), stamped


def test_jobs_from_a_client_host_train_one_block_per_host_bitwise_and_stop_cleanly(hosts, reference, tmp_path):
    """`ray job submit` from the client: one run to SUCCEEDED, one block per worker host, bitwise
    equal to al_local; another, submitted beside it, ended by `ray job stop`."""
    runs = [*RUN, "ray.num_cpus_per_block=0.5", f"run_dir={tmp_path}"]  # both runs at once on 4 CPUs
    submit(hosts, "hosts-long", [*runs, "train.epochs=100000", "name=long"])
    stopped = False
    try:
        submit(hosts, "hosts-ok", [*runs, "train.epochs=2", "name=ok"])
        # the shared filesystem says when to look (each `ray job` call costs seconds of CPU): a run
        # writes summary.json when it ends, and a line to metrics.jsonl per epoch
        ended, trained = tmp_path / "ok" / "summary.json", tmp_path / "long" / "metrics.jsonl"
        deadline = time.time() + 240
        while not (ended.is_file() and trained.is_file()) and time.time() < deadline:
            time.sleep(0.5)
        assert wait_for(hosts, "hosts-ok", {"SUCCEEDED", "FAILED", "STOPPED"}, 60) == "SUCCEEDED", \
            logs(hosts, "hosts-ok")
        ok = logs(hosts, "hosts-ok")
        placed = placements(ok)
        assert [b for b, _ in placed] == [1, 2] and len({ip for _, ip in placed}) == 2, ok[-3000:]
        assert {ip for _, ip in placed} <= {h.ip for h in hosts.worker_hosts}  # never the head (0 CPUs)
        assert_bitwise_equal_to_reference(reference, tmp_path / "ok", 2)  # written on the workers, read here
        assert f"test_acc={reference(2)[1][-1]['test_acc']:.4f}" in ok
        assert trained.is_file() and status(hosts, "hosts-long") == "RUNNING", logs(hosts, "hosts-long")[-3000:]
        hosts.ray("job", "stop", "hosts-long")
        stopped = wait_for(hosts, "hosts-long", {"STOPPED", "FAILED", "SUCCEEDED"}, 60) == "STOPPED"
        assert stopped and "ray-al: interrupted" in logs(hosts, "hosts-long")  # SIGTERM became a clean exit
        print(f"\njobs: submitted from {hosts.client.ip} to {hosts.address}; blocks on {[ip for _, ip in placed]}, "
              f"SUCCEEDED, state diff 0; the other STOPPED")
    finally:  # a failed test must not leave a run holding the workers' CPUs
        if not stopped:
            hosts.ray("job", "stop", "hosts-long", check=False)


def _http(hosts, method: str, path: str, token: str | None) -> tuple[int, str]:
    """Status and body of one request from the client host to the head's job server."""
    headers = f"{{'Authorization': 'Bearer {token}'}}" if token else "{}"
    code = (f"import urllib.request, urllib.error\n"
            f"req = urllib.request.Request('{hosts.address}{path}', method='{method}', headers={headers},\n"
            f"    data=b'{{\"entrypoint\": \"echo should-never-run\"}}' if '{method}' == 'POST' else None)\n"
            f"try:\n    r = urllib.request.urlopen(req, timeout=20); print(r.status); print(r.read().decode())\n"
            f"except urllib.error.HTTPError as e:\n    print(e.code)\n")
    out = subprocess.run(hosts.client.cmd(sys.executable, "-c", code), capture_output=True, text=True, timeout=60,
                         check=False)
    status_line, _, body = out.stdout.partition("\n")
    return int(status_line), body


def test_requests_without_the_token_are_refused(hosts):
    assert _http(hosts, "POST", "/api/jobs/", None)[0] == 401      # no token: nothing submitted
    assert _http(hosts, "GET", "/api/jobs/", None)[0] == 401
    assert _http(hosts, "GET", "/api/jobs/", "not-the-token")[0] == 403
    code, jobs = _http(hosts, "GET", "/api/jobs/", hosts.token)
    assert code == 200 and "should-never-run" not in jobs
    wrong = hosts.ray("job", "list", check=False, env={**hosts.env, "RAY_AUTH_TOKEN": "not-the-token"})
    assert wrong.returncode != 0


def test_slow_link_to_the_head_still_trains_bitwise(hosts, reference, tmp_path):
    how = hosts.delay(hosts.head, 25)  # every packet to or from the head (driver, GCS) waits 25 ms more
    try:
        probe = (f"import socket, time; t = time.perf_counter(); "
                 f"socket.create_connection(('{hosts.head.ip}', 6379), timeout=5).close(); "
                 f"print(time.perf_counter() - t)")
        rtt = float(subprocess.run(hosts.client.cmd(sys.executable, "-c", probe), capture_output=True, text=True,
                                   timeout=60, check=True).stdout)
        assert rtt >= 0.045, f"the delay ({how}) is not in effect: connect took {rtt * 1000:.1f} ms"
        rc, out, _ = run_on_head(hosts, tmp_path, "slow", 2)
        assert rc == 0, out[-3000:]
        placed = [ip for _, ip in placements(out)]
        assert len(set(placed)) == 2 and hosts.head.ip not in placed
        assert_bitwise_equal_to_reference(reference, tmp_path / "slow", 2)
        print(f"\nslow link: head (driver, GCS) +25 ms each way ({how}), connect {rtt * 1000:.0f} ms; blocks on "
              f"{placed}; completed, state diff 0")
    finally:
        hosts.undelay(hosts.head)


def test_block_replicas_on_different_hosts_equal_al_local_with_twice_the_batch(hosts, reference, tmp_path):
    """ray.replicas_per_block=2 of batch 16 with STRICT_SPREAD: one actor per worker host, so each block's two
    replicas sit on two hosts and average their gradients over the bridge (gloo). The result equals al_local with
    batch 32 (the reference) within test_replicas' tolerance."""
    hosts.heal()  # every worker host up: the four actors need all four
    rc, out, _ = run_on_head(hosts, tmp_path, "replicas", EPOCHS, "ray.replicas_per_block=2", "data.batch_size=16")
    assert rc == 0, out[-3000:]
    placed = replica_placements(out.splitlines())
    assert [(i, r) for i, r, _, _ in placed] == [(1, 0), (2, 0), (1, 1), (2, 1)], out[-3000:]
    ip = {(i, r): ip for i, r, ip, _ in placed}
    assert ip[1, 0] != ip[1, 1] and ip[2, 0] != ip[2, 1], placed  # a block's replicas on different hosts
    assert set(ip.values()) <= {h.ip for h in hosts.worker_hosts}
    run_dir = tmp_path / "replicas"
    assert read_manifest(str(run_dir))["replicas_per_block"] == 2
    states, _ = reference(EPOCHS)
    assert complete_checkpoints(str(run_dir))[-1] == EPOCHS * STEPS_PER_EPOCH
    for i, (a, b) in enumerate(zip(final_states(run_dir), states, strict=True)):  # replica 0 wrote them
        assert_states_equal(a, b, f"block {i + 1}", tol=REPLICA_TOL)
    worst = max((a - b).abs().max().item() for got, want in zip(final_states(run_dir), states)
                for a, b in _float_tensors(got, want))
    print(f"\nreplicas: blocks x replicas on {[(i, r, ip) for i, r, ip, _ in placed]}; {EPOCHS * STEPS_PER_EPOCH} "
          f"steps of 2 x 16; max |diff| against al_local batch 32: {worst:.2g}")


def _float_tensors(a, b):
    """Pairs of the floating tensors of two nested states, in the same order."""
    if isinstance(a, torch.Tensor):
        return [(a.double(), b.double())] if a.is_floating_point() else []
    if isinstance(a, dict):
        return [p for k in a for p in _float_tensors(a[k], b[k])]
    if isinstance(a, (list, tuple)):
        return [p for x, y in zip(a, b) for p in _float_tensors(x, y)]
    return []


def _newest_checkpoint(run_dir: Path) -> int:
    return complete_checkpoints(str(run_dir))[-1]



def test_losing_a_host_recovers_on_the_others_bitwise(hosts, reference, tmp_path):
    hosts.heal()
    lost = {}

    def kill_host_of_block_1(line):
        host = hosts.host_of(PLACED.match(line).group(3))
        lost.update(host=host, checkpoint=_newest_checkpoint(tmp_path / "loss"))
        lost.update(killed=host.kill_all(), at=time.time())

    fault = FaultInjector(tmp_path / "loss", after_step=40, block=1, fault=kill_host_of_block_1, timeout=240)
    rc, out, stamped = run_on_head(hosts, tmp_path, "loss", EPOCHS, *FAULTY, fault=fault)
    assert fault.error is None and lost, out[-3000:]
    assert rc == 0, out[-3000:]
    restarted = re.findall(r"rebuilt every block from checkpoint step (\d+)", out)
    # from the newest checkpoint complete at the kill (or the one in flight then, if it completed)
    assert len(restarted) == 1 and 0 <= int(restarted[0]) - lost["checkpoint"] <= EVERY, out[-3000:]
    before, after = placements(out)[:2], placements(out)[2:]
    assert len(after) == 2 and lost["host"].ip not in {ip for _, ip in after}
    assert len({ip for _, ip in after}) == 2  # still one block per host, on the two left
    assert_bitwise_equal_to_reference(reference, tmp_path / "loss", EPOCHS)
    noticed = _seen(stamped, "block lost:") - lost["at"]
    print(f"\nhost loss: killed {lost['killed']} processes of {lost['host'].role} ({lost['host'].ip}, block 1) "
          f"after checkpoint {lost['checkpoint']}; noticed {noticed:.1f}s later; 1 restart, from step "
          f"{restarted[0]} (under {EVERY} steps redone); blocks {[ip for _, ip in before]} -> "
          f"{[ip for _, ip in after]}; final step {EPOCHS * STEPS_PER_EPOCH}, state diff 0")


def _seen(stamped, text: str) -> float:
    """When the first line containing `text` was seen."""
    return next(t for t, line in stamped if text in line)


def test_cut_link_ends_in_bound_and_keeps_every_checkpoint(hosts, reference, tmp_path):
    hosts.heal()
    cut = {}

    def cut_link_of_block_2(line):
        host = hosts.host_of(PLACED.match(line).group(3))
        run_dir = str(tmp_path / "cut")
        saved = {s: read_manifest(run_dir, s) for s in complete_checkpoints(run_dir)}
        hosts.link(host, up=False)
        cut.update(host=host, at=time.time(), saved=saved)
        cut["heal"] = threading.Timer(LINK_DOWN_S, hosts.link, args=(host, True))
        cut["heal"].start()

    fault = FaultInjector(tmp_path / "cut", after_step=40, block=2, fault=cut_link_of_block_2, timeout=240)
    try:
        rc, out, stamped = run_on_head(hosts, tmp_path, "cut", EPOCHS, *FAULTY, "checkpoint.keep=1000", fault=fault)
    finally:
        if cut:
            cut["heal"].cancel()
            hosts.link(cut["host"], up=True)
    assert fault.error is None and cut, out[-3000:]
    ended = stamped[-1][0] - cut["at"]
    assert ended < PARTITION_BOUND_S, f"run ended {ended:.0f}s after the cut"
    for manifest in cut["saved"].values():  # nothing complete at the cut was lost or damaged
        for i in range(len(manifest["blocks"])):
            read_block(str(tmp_path / "cut"), manifest, i)
    if rc == 0:
        noticed = _seen(stamped, "block lost:") - cut["at"]
        assert noticed < DETECTION_BOUND_S, f"the cut was noticed {noticed:.0f}s after it happened"
        assert_bitwise_equal_to_reference(reference, tmp_path / "cut", EPOCHS)
        restarted = re.findall(r"rebuilt every block from checkpoint step (\d+)", out)
        after = placements(out)[2:]
        assert len(restarted) == 1 and cut["host"].ip not in {ip for _, ip in after}
        outcome = (f"noticed {noticed:.1f}s after the cut, recovered from step {restarted[0]} on "
                   f"{[ip for _, ip in after]}; state diff 0")
    else:
        errors = [line for line in out.splitlines() if line.startswith("ray-al: error:")]
        assert rc == 2 and len(errors) == 1, out[-3000:]
        outcome = f"failed with: {errors[0]}"
    print(f"\npartition: cut {cut['host'].role} ({cut['host'].ip}, block 2) after checkpoint "
          f"{max(cut['saved'])} for {LINK_DOWN_S:.0f}s; run ended {ended:.1f}s after the cut; {outcome}; "
          f"{len(cut['saved'])} checkpoints complete at the cut, all intact")


def test_where_hosts_cannot_be_made_a_laptop_skips_and_ci_as_root_fails(monkeypatch):
    from tests import hosts as module

    def build_fails(**kwargs):
        raise module.HostsError("ip netns add: Operation not permitted")

    monkeypatch.setattr(module, "Hosts", build_fails)
    monkeypatch.setattr(module, "unavailable", lambda: "iproute2's `ip` is not installed")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="`ip` is not installed"):
        module.hosts_for_tests()
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(module.os, "geteuid", lambda: 1000)  # not root: cannot be made, even in CI
    with pytest.raises(pytest.skip.Exception, match="`ip` is not installed"):
        module.hosts_for_tests()
    monkeypatch.setattr(module.os, "geteuid", lambda: 0)
    with pytest.raises(pytest.fail.Exception, match="CI=true and root, but .* Operation not permitted"):
        module.hosts_for_tests()
    monkeypatch.setattr(module, "unavailable", lambda: None)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="could not be built here: .* Operation not permitted"):
        module.hosts_for_tests()
