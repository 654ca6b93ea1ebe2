import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from hpa_pipeline.errors import ConfigError, PipelineError
from hpa_pipeline.nets.devices import amp_dtype, claim_device, configure_threads, share_gpus

# A helper process: claims one of 3 simulated GPUs, prints it, holds it until stdin closes.
HOLDER = """
import sys
from pathlib import Path
from hpa_pipeline.nets.devices import claim_device
claim = claim_device(lock_dir=Path(sys.argv[1]), n_cuda=3, timeout_s=float(sys.argv[2]), poll_s=0.05)
print(claim.device, flush=True)
sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def _no_scheduler_view(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def _start_holder(lock_dir, timeout_s=5.0):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_dir), str(timeout_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_three_claims_in_one_process_get_distinct_gpus_and_a_fourth_fails(tmp_path):
    claims = [claim_device(lock_dir=tmp_path, n_cuda=3, timeout_s=0) for _ in range(3)]
    assert sorted(c.device for c in claims) == ["cuda:0", "cuda:1", "cuda:2"]
    started = time.monotonic()
    with pytest.raises(
        PipelineError, match=r"no free GPU after waiting 0\.3 s: all 3 slots are claimed \(cuda:0 by pid"
    ):
        claim_device(lock_dir=tmp_path, n_cuda=3, timeout_s=0.3, poll_s=0.05)
    assert time.monotonic() - started >= 0.3
    claims[1].release()
    with claim_device(lock_dir=tmp_path, n_cuda=3, timeout_s=0) as again:
        assert again.device == claims[1].device and again.held
    assert not again.held
    for claim in claims:
        claim.release()


def test_a_waiting_claim_gets_the_gpu_released_meanwhile(tmp_path):
    holder = claim_device(lock_dir=tmp_path, n_cuda=1, timeout_s=0)
    threading.Timer(0.3, holder.release).start()
    with claim_device(lock_dir=tmp_path, n_cuda=1, timeout_s=5, poll_s=0.05) as claim:
        assert claim.device == "cuda:0"


def test_claims_in_separate_processes_get_distinct_gpus_and_a_killed_holder_frees_its_gpu(tmp_path):
    holders = [_start_holder(tmp_path) for _ in range(3)]
    try:
        devices = [h.stdout.readline().strip() for h in holders]
        assert sorted(devices) == ["cuda:0", "cuda:1", "cuda:2"], [h.stderr.read() for h in holders if h.poll()]
        fourth = _start_holder(tmp_path, timeout_s=0.3)
        _, err = fourth.communicate(timeout=30)
        assert fourth.returncode != 0 and "no free GPU" in err
        victim = holders[devices.index("cuda:1")]
        victim.send_signal(signal.SIGKILL)  # no cleanup code runs: the kernel drops the flock
        victim.wait(timeout=10)
        with claim_device(lock_dir=tmp_path, n_cuda=3, timeout_s=5, poll_s=0.05) as claim:
            assert claim.device == "cuda:1"
    finally:
        for holder in holders:
            if holder.poll() is None:
                holder.stdin.close()
                holder.wait(timeout=10)


def test_an_explicit_gpu_is_claimed_through_its_lock(tmp_path):
    with claim_device("cuda:2", lock_dir=tmp_path, n_cuda=3, timeout_s=0) as claim:
        assert claim.device == "cuda:2" and claim.lock_path.name == "gpu2.lock"
        with pytest.raises(PipelineError, match="cuda:2 by pid"):
            claim_device("cuda:2", lock_dir=tmp_path, n_cuda=3, timeout_s=0)
        with claim_device(lock_dir=tmp_path, n_cuda=3, timeout_s=0) as other:
            assert other.device == "cuda:0"
    with pytest.raises(ConfigError, match="only 3 CUDA"):
        claim_device("cuda:3", lock_dir=tmp_path, n_cuda=3)


def test_scheduler_restricted_gpus_use_cuda0_without_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    claims = [claim_device(lock_dir=tmp_path, n_cuda=1) for _ in range(2)]
    assert [c.device for c in claims] == ["cuda:0", "cuda:0"]
    assert all(c.lock_path is None and not c.held for c in claims)
    assert list(tmp_path.iterdir()) == []


def test_user_restricted_set_of_gpus_is_shared_through_locks_by_physical_id(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    with claim_device(lock_dir=tmp_path, n_cuda=2) as first, claim_device(lock_dir=tmp_path, n_cuda=2) as second:
        assert (first.device, second.device) == ("cuda:0", "cuda:1")
        assert (first.lock_path.name, second.lock_path.name) == ("gpu1.lock", "gpu3.lock")
        with pytest.raises(PipelineError, match="no free GPU"):
            claim_device(lock_dir=tmp_path, n_cuda=2, timeout_s=0)
        # another job that sees physical GPU 3 first must not take it while it is claimed
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,0")
        with claim_device(lock_dir=tmp_path, n_cuda=2, timeout_s=0) as third:
            assert third.device == "cuda:1" and third.lock_path.name == "gpu0.lock"


def test_cpu_when_asked_or_without_cuda(tmp_path, monkeypatch):
    assert claim_device("cpu", lock_dir=tmp_path, n_cuda=3).device == "cpu"
    assert claim_device("auto", lock_dir=tmp_path, n_cuda=0).device == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert claim_device("auto", lock_dir=tmp_path, n_cuda=3).device == "cpu"
    with pytest.raises(ConfigError, match="no CUDA device"):
        claim_device("cuda", lock_dir=tmp_path, n_cuda=3)
    with pytest.raises(ConfigError, match="no CUDA device"):
        claim_device("cuda:0", lock_dir=tmp_path, n_cuda=3)
    with pytest.raises(ConfigError, match="'gpu'"):
        claim_device("gpu", lock_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_real_device_count_on_this_machine(tmp_path):
    import torch

    claim = claim_device(lock_dir=tmp_path, timeout_s=0)
    assert claim.device.startswith("cuda:") if torch.cuda.is_available() else claim.device == "cpu"
    assert claim.torch_device.type == claim.device.split(":")[0]
    claim.release()


def test_configure_threads_and_amp_dtype():
    import torch

    cv2 = pytest.importorskip("cv2")
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        configure_threads(1)
        assert torch.get_num_threads() == 1
        assert cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
    with pytest.raises(ConfigError, match="threads"):
        configure_threads(0)
    assert amp_dtype("cpu") is None


def test_jobs_per_gpu_hands_out_slots_spread_over_the_gpus(tmp_path):
    claims = [claim_device(lock_dir=tmp_path, n_cuda=2, jobs_per_gpu=3, timeout_s=0) for _ in range(6)]
    assert [c.device for c in claims] == ["cuda:0", "cuda:1"] * 3  # every GPU gets one before a second
    assert len({c.lock_path for c in claims}) == 6
    assert claims[0].lock_path.name == "gpu0.slot0.lock" and claims[5].lock_path.name == "gpu1.slot2.lock"
    with pytest.raises(PipelineError, match="all 6 slots are claimed.*jobs_per_gpu \\(3\\)"):
        claim_device(lock_dir=tmp_path, n_cuda=2, jobs_per_gpu=3, timeout_s=0)
    claims[3].release()
    with claim_device(lock_dir=tmp_path, n_cuda=2, jobs_per_gpu=3, timeout_s=0) as again:
        assert again.device == "cuda:1" and again.lock_path == claims[3].lock_path


def test_jobs_per_gpu_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HPA_PIPELINE_JOBS_PER_GPU", "2")
    first, second = (claim_device(lock_dir=tmp_path, n_cuda=1, timeout_s=0) for _ in range(2))
    assert first.device == second.device == "cuda:0" and first.lock_path != second.lock_path
    monkeypatch.setenv("HPA_PIPELINE_JOBS_PER_GPU", "0")
    with pytest.raises(ConfigError, match="HPA_PIPELINE_JOBS_PER_GPU='0'"):
        claim_device(lock_dir=tmp_path, n_cuda=1, timeout_s=0)
    monkeypatch.delenv("HPA_PIPELINE_JOBS_PER_GPU")
    assert claim_device(lock_dir=tmp_path / "single", n_cuda=1, timeout_s=0).lock_path.name == "gpu0.lock"


def test_the_workflow_hands_jobs_per_gpu_to_its_jobs(tmp_path, monkeypatch):
    monkeypatch.delenv("HPA_PIPELINE_JOBS_PER_GPU", raising=False)
    share_gpus(2)
    child = subprocess.run(
        [sys.executable, "-c", "from hpa_pipeline.nets.devices import default_jobs_per_gpu as d; print(d())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert child.stdout.strip() == "2"
    monkeypatch.delenv("HPA_PIPELINE_JOBS_PER_GPU")
    with pytest.raises(ConfigError, match="jobs_per_gpu = 0"):
        share_gpus(0)
