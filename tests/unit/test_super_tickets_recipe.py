"""recipes/super_tickets: the Makefile's commands (dry run, from another folder) and the sbatch
script's array mapping and requeue (with stand-ins for srun and scontrol)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "super_tickets"
SBATCH = RECIPE / "super_tickets.sbatch"

pytestmark = pytest.mark.skipif(not shutil.which("make") or not shutil.which("bash"), reason="needs make and bash")


def _make(*args: str, cwd: Path) -> str:
    res = subprocess.run(["make", "-s", "-C", str(RECIPE), "-n", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_makefile_commands_from_another_folder(tmp_path):
    out = _make("super-rte", "super-mnli", "SEED=3", "GLUE_DIR=/data/glue", "BT=bt", cwd=tmp_path)
    rte, mnli = [line for line in out.replace("\\\n", " ").splitlines() if "prune" in line]
    for want in ("bt prune method=super_tickets task=rte", "task.data_dir=/data/glue/RTE", "seed=3",
                 "run_name=rte-bert-base-uncased-super-s3", '"method.levels=[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]"',
                 "train.lr=5e-5", "train.batch_size=32", "train.warmup_ratio=0.1", "train.epochs=6", "resume=true"):
        assert want in rte
    assert "train.epochs=3" in mnli  # the paper's epochs per task
    assert f"output_dir={RECIPE.parent.parent / 'runs' / 'super_tickets'}" in rte  # absolute under make -C
    slurm = _make("slurm-glue", "TASKS=mrpc rte", "SEEDS=1 2 3", cwd=tmp_path)
    assert f"mkdir -p {RECIPE.parent.parent / 'logs'}" in slurm
    assert "--array=0-5" in slurm and f"{SBATCH}" in slurm and "--open-mode=append" in slurm
    assert "view=super_tickets" in _make("table", cwd=tmp_path) and "plot=true" in _make("figure", cwd=tmp_path)


def _sbatch(tmp_path: Path, status: int, index: int, **env: str) -> subprocess.CompletedProcess:
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    (stubs / "srun").write_text(f"#!/bin/bash\necho \"SRUN $*\"\nexit {status}\n")
    (stubs / "scontrol").write_text("#!/bin/bash\necho \"SCONTROL $*\"\n")
    for f in stubs.iterdir():
        f.chmod(0o755)
    full = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_ARRAY_JOB_ID": "77",
            "SLURM_ARRAY_TASK_ID": str(index), "SLURM_JOB_ID": "84", "BT": "bt", **env}
    return subprocess.run(["bash", str(SBATCH), "mnli qnli", "1 2 3 4 5", "/data/glue"], env=full,
                          capture_output=True, text=True, timeout=60)


def test_sbatch_maps_the_array_and_requeues_only_itself(tmp_path):
    res = _sbatch(tmp_path, 75, 7)
    assert res.returncode == 75
    (srun,) = [line for line in res.stdout.splitlines() if line.startswith("SRUN")]
    assert "task=qnli" in srun and "seed=3" in srun and "train.epochs=3" in srun
    assert "task.data_dir=/data/glue/QNLI" in srun and "method.levels=[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]" in srun
    assert "SCONTROL requeue 77_7" in res.stdout  # this element, not the whole array (77) nor 84
    done = _sbatch(tmp_path, 0, 1, EPOCHS="2")
    assert done.returncode == 0 and "SCONTROL" not in done.stdout and "train.epochs=2" in done.stdout
    failed = _sbatch(tmp_path, 1, 0)
    assert failed.returncode == 1 and "SCONTROL" not in failed.stdout
    past = _sbatch(tmp_path, 0, 10)
    assert past.returncode == 0 and "nothing to do" in past.stdout and "SRUN" not in past.stdout


def test_multitask_targets_differ_in_the_ticket_setting_only(tmp_path):
    import shlex

    from bert_ticket_cli.config.compose import compose, validate

    out = _make("mtl-dense", "mtl-share", "SEED=2", "GLUE_DIR=/data/glue", "BT=bt", "MT_TASKS=sst2 mrpc stsb rte",
                cwd=tmp_path)
    dense, share = [shlex.split(line)[2:] for line in out.replace("\\\n", " ").splitlines() if "rewind" in line]
    assert "multitask.tasks=[sst2,mrpc,stsb,rte]" in dense and "train.epochs=5" in dense
    assert "multitask.sampling=proportional" in dense and "task.data_dir=/data/glue" in dense
    extra = set(share) - set(dense)
    assert {a.split("=")[0] for a in extra} == {"run_name", "multitask.tickets_from"}
    for args in (dense, share):  # the commands compose and validate as they are
        cfg = validate(compose("rewind", args), "rewind")
        assert cfg.task.name == "multi" and cfg.multitask.tasks == ["sst2", "mrpc", "stsb", "rte"]
    assert "view=multitask" in _make("mtl-table", cwd=tmp_path)


def test_sweep_target_runs_two_sweeps_with_the_paper_epochs(tmp_path):
    import shlex

    from bert_ticket_cli.config.compose import compose, validate

    out = _make("sweep", "GLUE_DIR=/data/glue", "TASKS=mnli qnli mrpc rte", "SEEDS=1 2", "BT=bt", cwd=tmp_path)
    commands = [shlex.split(part.split("||")[0]) for part in out.replace("\\\n", " ").split(";") if "prune -m" in part]
    assert len(commands) == 2
    first, second = ({a.split("=", 1)[0]: a.split("=", 1)[1] for a in c if "=" in a} for c in commands)
    assert (first["task"], first["train.epochs"], first["launcher.sweep_id"]) == ("mnli,qnli", "3", "super-tickets-3ep")
    assert (second["task"], second["train.epochs"], second["launcher.sweep_id"]) == ("mrpc,rte", "6", "super-tickets-6ep")
    assert first["seed"] == "1,2" and first["launcher"] == "slurm" and "view=super_tickets" in out
    # one job of each sweep composes and validates as it is (the sweep checks every job the same way)
    for c in commands:
        job = [a.split("=", 1)[0] + "=" + a.split("=", 1)[1].split(",")[0] if "=" in a and not a.startswith(
            "method.levels") else a for a in c[3:]]
        cfg = validate(compose("prune", job), "prune")
        assert cfg.method.name == "super_tickets" and cfg.launcher.name == "slurm"
