"""Training at scale through `launch.py` on the digits ViT: one device, eight devices
(data and fsdp meshes), two processes, and runs interrupted by SIGTERM and SIGKILL all
end with the parameters and losses of one uninterrupted single-device run. The runs shift
images and mix them up: each process augments its rows of a batch as a single process
augments the whole batch."""

import json
import random
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, cpu_devices, finish_processes, launch, launch_command, launch_processes, start_processes

from ml_transformer.train.checkpoints import Checkpoints

STEPS = 40


def run_args(workdir, data_dir, *extra, checkpoint_every_steps=STEPS):
    """Runs save only at the end unless they are to be interrupted: on eight CPU devices,
    saving every 2 steps doubles a run's time."""
    return [
        "--config=experiments/vit_digits.py:smoke", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
        f"--config.total_steps={STEPS}", "--config.log_every_steps=1",
        f"--config.checkpoint_every_steps={checkpoint_every_steps}", f"--config.eval_every_steps={STEPS}",
        "--config.keep_checkpoints=3", "--config.data.mixup_alpha=0.2", *extra,
    ]


def final(workdir):
    """(losses by step as last logged, parameters of the last checkpoint, final test metrics)."""
    losses = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            losses[record["step"]] = record["train/loss"]
    checkpoints = Checkpoints(str(workdir / "checkpoints"))
    step = checkpoints.latest_step()
    layout = checkpoints.saved_layout(step, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    params = checkpoints.restore(step, layout)[0]["params"]
    checkpoints.close()
    test = json.loads((workdir / "eval" / f"test-{step}.json").read_text())
    return losses, params, {k: v for k, v in test.items() if k not in ("split", "checkpoint")}


def assert_same_run(a, b, atol):
    (losses_a, params_a, test_a), (losses_b, params_b, test_b) = a, b
    assert sorted(losses_a) == sorted(losses_b) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([losses_a[s] for s in losses_a], [losses_b[s] for s in losses_a], atol=atol)
    largest = 0.0
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(params_a), jax.tree.leaves(params_b), strict=True):
        # Softmax ignores the key bias (it shifts all of a query's scores alike): its gradient
        # is rounding noise, which Adam scales up to full steps, differently per layout.
        if atol and "'key']['bias']" in jax.tree_util.keystr(path):
            continue
        np.testing.assert_allclose(x, y, atol=atol, err_msg=jax.tree_util.keystr(path))
        largest = max(largest, float(np.max(np.abs(np.asarray(x) - np.asarray(y)))))
    print(f"max |loss difference| {max(abs(losses_a[s] - losses_b[s]) for s in losses_a):.2g}, "
          f"max |parameter difference| {largest:.2g}, final losses {losses_a[STEPS]:.8g} and {losses_b[STEPS]:.8g}")
    assert test_a.keys() == test_b.keys()
    np.testing.assert_allclose(list(test_a.values()), list(test_b.values()), atol=atol)


def wait_for_checkpoint(directory, step, processes):
    """Returns once a checkpoint of `step` or later is in `directory`; fails if a process ends first."""
    while not any(p.name.isdigit() and int(p.name) >= step for p in directory.glob("*")):
        for process in processes:
            assert process.poll() is None, process.log.read_text()[-3000:]
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tfds_dir):
    """One uninterrupted run on one device, profiled at steps 3-4."""
    workdir = tmp_path_factory.mktemp("one_device")
    result = launch(*run_args(workdir, tfds_dir, "--profile_steps=3:5"), env=cpu_devices(1))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def reference(reference_run):
    return final(reference_run)


def test_profile_steps_write_a_trace_for_tensorboard(reference_run):
    assert list((reference_run / "profile").rglob("*.xplane.pb"))


@pytest.mark.parametrize("mesh", [["--config.mesh.data=8"], ["--config.mesh.data=2", "--config.mesh.fsdp=4"]],
                         ids=["data8", "data2-fsdp4"])
def test_eight_devices_train_as_one(tmp_path, tfds_dir, reference, mesh):
    result = launch(*run_args(tmp_path, tfds_dir, *mesh), env=cpu_devices(8))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(final(tmp_path), reference, atol=1e-5)


def test_two_processes_stopped_by_sigterm_resume_and_train_as_one(tmp_path, tfds_dir, reference):
    """SIGTERM to one process (once checkpoint 6 exists) stops both after the same step,
    with a checkpoint; two new processes resume from it."""
    args = run_args(tmp_path, tfds_dir, "--config.mesh.data=4", "--config.mesh.fsdp=2", checkpoint_every_steps=6)
    processes = start_processes(tmp_path, *args, count=2, devices=4)
    wait_for_checkpoint(tmp_path / "checkpoints", 6, processes)
    processes[1].send_signal(signal.SIGTERM)
    stopped = finish_processes(processes)
    assert all("stopped by SIGTERM after step" in output for output in stopped)
    outputs = launch_processes(tmp_path, *args, count=2, devices=4)
    assert all("Resumed from the checkpoint at step" in output for output in outputs)
    assert "test @ step" in outputs[0] and "test @ step" not in outputs[1]  # only process 0 reports
    assert_same_run(final(tmp_path), reference, atol=1e-5)


def test_runs_stopped_by_sigterm_and_killed_by_sigkill_resume_to_the_same_end(tmp_path, tfds_dir, reference):
    """Stops: SIGTERM once checkpoint 4 exists, then SIGKILL at random moments after
    checkpoints 14 and 26; each restart resumes."""
    rng = random.Random(0)
    stops = [(4, signal.SIGTERM), (14, signal.SIGKILL), (26, signal.SIGKILL)]
    checkpoints = tmp_path / "checkpoints"
    args = run_args(tmp_path, tfds_dir, checkpoint_every_steps=2)
    for n, (after, sig) in enumerate(stops):
        log = tmp_path / f"start{n}.log"
        with log.open("w") as out:
            process = subprocess.Popen(launch_command(*args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out)
        process.log = log
        wait_for_checkpoint(checkpoints, after, [process])
        time.sleep(rng.uniform(0.0, 0.2))
        assert process.poll() is None, "the run ended before the signal"
        process.send_signal(sig)
        process.wait(timeout=120)
        saved = sorted(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit())
        print(f"{sig.name} with checkpoints {saved} saved")
        if sig == signal.SIGTERM:
            assert process.returncode == 0, log.read_text()[-3000:]
            assert "stopped by SIGTERM after step" in log.read_text()
        else:
            assert process.returncode == -signal.SIGKILL
    result = launch(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed from the checkpoint at step" in result.stderr
    assert_same_run(final(tmp_path), reference, atol=0)
