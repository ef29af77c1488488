"""One-command GPU check (run through ``benchmarks/gpu_check.sh``): every GPU figure of the
project in one run of at most 8 minutes on one GPU, as ONE JSON object on stdout.

Steps, each a separate process with its own time limit (a hung step cannot eat the others'):

1. ``tests_gpu``      -- ``pytest tests/gpu`` (fine-tuning in bf16 / fp16, DeepSpeed ZeRO-2);
2. ``pretrain``       -- ``pretrain_throughput.py`` at BERT-base geometry (12 x 768, seq 128,
   batch 64), bf16, with MFU against the device's dense bf16 peak (:data:`PEAK_TFLOPS`);
3. ``finetune``       -- ``finetune_throughput.py`` in bf16 (ours vs the plain loop);
4. ``compact``        -- ``compact_speed.py`` on the GPU (bf16): compacted / dense step time;
5. ``two_four``       -- ``semi_structured_speed.py``: 2:4 kernels vs the masked dense model,
   inference at batch 16 and 64 (BERT-base, seq 128, bf16), with the largest logit difference;
6. ``deepspeed_zero2_bf16`` -- 50 optimizer steps of the real CLI
   (``bert-ticket rewind experiment=demo engine=deepspeed_zero2_bf16``);
7. ``fp16_loss_scale`` -- 50 steps of the real CLI in fp16 (native AMP: the dynamic loss scale
   is logged in ``metrics.jsonl``; the step fails if no scale was recorded).

The JSON holds every step's status (``ok`` / ``failed`` / ``timeout``), seconds, figures and,
for a failed step, the tail of its output; the exit status is 1 if any step did not pass.
``--dry-run`` executes every step at a tiny size on the CPU (tiny models, 1 round, 2 CLI
steps; fp16 and the 2:4 kernels need CUDA, so there the fp16 step runs in fp32 and the 2:4
step times the dense side and records why the kernels could not run): what the test suite
runs so the script keeps working without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
BUDGET_S = 470  # the whole check: under 8 minutes (the driver's own start-up included)

#: Dense bf16 tensor-core peak, TFLOP/s, by device name (the first entry contained in
#: torch.cuda.get_device_name(), case-insensitive, wins: the specific names come first).
PEAK_TFLOPS = [
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0),
    ("B200", 2250.0), ("B100", 1750.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 6000 Ada", 364.0), ("RTX A6000", 155.0),
    ("4090", 165.0), ("3090", 71.0), ("V100", 125.0), ("T4", 65.0),
]


def peak_tflops(name: str) -> float | None:
    low = name.lower()
    return next((peak for key, peak in PEAK_TFLOPS if key.lower() in low), None)


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


class Check:
    def __init__(self, python: str, dry: bool, deadline: float, workdir: Path):
        self.python, self.dry, self.deadline, self.workdir = python, dry, deadline, workdir
        self.steps: dict[str, dict] = {}
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if dry:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU path, even on a GPU box

    def run(self, name: str, argv: list[str], limit: float, parse) -> None:
        left = self.deadline - time.monotonic()
        # A step's limit is sized for the GPU run; the dry run checks that every step executes,
        # on whatever CPU (a loaded CI runner starts DeepSpeed slowly): only the budget bounds it.
        limit = max(1.0, left if self.dry else min(limit, left))
        t0 = time.monotonic()
        record: dict = {"status": "failed"}
        try:
            p = subprocess.run([self.python, *argv], cwd=REPO, env=self.env, capture_output=True, text=True,
                               timeout=limit)
            if p.returncode == 0:
                record = parse(p.stdout)
                record = {"status": "failed" if record.get("error") else "ok", **record}
            else:
                record["returncode"] = p.returncode
            if record["status"] != "ok":
                record["tail"] = (p.stdout + p.stderr)[-1500:]
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            record = {"status": "timeout", "limit_s": round(limit, 1), "tail": out[-1500:]}
        except Exception as exc:  # noqa: BLE001 - a parse error is this step's failure, not the check's
            record = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        record["seconds"] = round(time.monotonic() - t0, 1)
        self.steps[name] = record
        print(f"[gpu_check] {name}: {record['status']} in {record['seconds']} s", file=sys.stderr, flush=True)


def bench_parse(keys):
    def parse(stdout: str) -> dict:
        data = last_json(stdout)
        if data is None:
            return {"error": "no JSON line on stdout"}
        return {k: data.get(k) for k in keys}
    return parse


def cli_run(check: Check, name: str, run_name: str, args: list[str], limit: float, need_scale: bool) -> None:
    out = check.workdir / "runs"

    def parse(_stdout: str) -> dict:
        rd = out / "rewind" / run_name
        summary = json.loads((rd / "summary.json").read_text())
        records = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines() if x.strip()]
        train = [r for r in records if r.get("event") == "train"]
        scales = [r["loss_scale"] for r in train if "loss_scale" in r]
        fig = {"steps": train[-1]["step"] if train else None, "final_loss": train[-1]["loss"] if train else None,
               "metrics": summary.get("metrics"), "distributed_type": summary.get("distributed_type"),
               "mixed_precision": summary.get("mixed_precision"), "loss_scales": scales}
        if need_scale and not scales:
            fig["error"] = "fp16 run recorded no loss scale: the loss-scale path did not run"
        return fig

    check.run(name, ["-m", "bert_ticket_cli", "rewind", *args, f"output_dir={out}", f"run_name={run_name}",
                     "overwrite=true"], limit, parse)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="one-command GPU check: every GPU figure as one JSON object")
    p.add_argument("--dry-run", action="store_true", help="every step at a tiny size on the CPU (what CI runs)")
    p.add_argument("--python", default=sys.executable, help="the interpreter of the installed project")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"the whole check's time limit ({BUDGET_S} s)")
    args = p.parse_args(argv)
    dry = args.dry_run
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    check = Check(args.python, dry, started + args.budget_s, workdir)

    import torch

    cuda = torch.cuda.is_available() and not dry
    device = {"name": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
              "cuda": torch.version.cuda, "capability": list(torch.cuda.get_device_capability(0)) if cuda else None}
    peak = peak_tflops(device["name"]) if cuda else None
    device["peak_bf16_tflops"] = peak
    dev = "cuda" if cuda else "cpu"
    bf16 = ["--bf16"] if cuda else []
    if not cuda and not dry:
        print(json.dumps({"ok": False, "error": "no CUDA device: run on a GPU machine, or pass --dry-run",
                          "device": device}), flush=True)
        return 1
    tiny = ["--layers", "1", "--hidden", "64", "--heads", "2", "--intermediate", "128", "--vocab", "1000"]

    # 1. tests/gpu (skipped without CUDA: the dry run checks that they still collect and run)
    def parse_pytest(stdout: str) -> dict:
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", stdout)}
        return {"counts": counts, **({"error": "tests failed"} if counts.get("failed") or counts.get("error") else {})}
    check.run("tests_gpu", ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"], 120, parse_pytest)

    # 2. pre-training at BERT-base geometry, MFU from the device's peak
    size = (tiny + ["--seq", "32", "--batch", "2", "--rounds", "1", "--iters", "1", "--warmup-steps", "1",
                    "--matmul-size", "128"] if dry else
            ["--layers", "12", "--hidden", "768", "--heads", "12", "--intermediate", "3072", "--seq", "128",
             "--batch", "64", "--rounds", "3", "--iters", "3"])
    check.run("pretrain", [str(BENCH / "pretrain_throughput.py"), "--device", dev, *bf16, *size,
                           *(["--peak-tflops", str(peak)] if peak else [])], 80,
              bench_parse(["speedup", "speedup_paired", "ours_tokens_per_s", "baseline_tokens_per_s", "mfu",
                           "flops_vs_matmul", "sanity_loss"]))

    # 3. fine-tuning (bf16)
    size = (tiny + ["--seq", "32", "--batch", "4", "--rounds", "1", "--steps", "2", "--warmup-steps", "1"] if dry else
            ["--layers", "12", "--hidden", "768", "--heads", "12", "--intermediate", "3072", "--seq", "128",
             "--batch", "32", "--steps", "10", "--rounds", "3"])
    check.run("finetune", [str(BENCH / "finetune_throughput.py"), "--device", dev, *bf16, *size], 90,
              bench_parse(["speedup", "speedup_paired", "ours_samples_per_s", "baseline_samples_per_s", "loss_gap"]))

    # 4. compaction on the GPU
    size = ["--quick", "--rounds", "1", "--steps", "1", "--warmup-steps", "1", "--seq-len", "16",
            "--batch-size", "2"] if dry else ["--rounds", "5", "--steps", "3", "--batch-size", "32"]
    check.run("compact", [str(BENCH / "compact_speed.py"), "--device", dev, *bf16, *size], 50,
              bench_parse(["train_step_ratio", "train_step_ratio_paired", "inference_ratio", "params_ratio",
                           "linear_flops_ratio"]))

    # 5. 2:4 kernels at batch 16 and 64
    size = (tiny + ["--seq", "16", "--batches", "2,4", "--rounds", "1", "--iters", "1", "--warmup", "1",
                    "--allow-unsupported"] if dry else ["--batches", "16,64", "--rounds", "5", "--iters", "10"])
    check.run("two_four", [str(BENCH / "semi_structured_speed.py"), "--device", dev, *size], 50,
              bench_parse(["results", "semi_structured"]))

    # 6. DeepSpeed ZeRO-2 bf16, the real CLI, 50 steps (dry: 2 steps in fp32 on the CPU)
    steps = "2" if dry else "50"
    common = ["experiment=demo", f"train.max_steps={steps}", "train.log_every=1" if dry else "train.log_every=10"]
    ds = ["engine=deepspeed_zero2_bf16", *(["engine.mixed_precision=no", "engine.cpu=true"] if dry else [])]
    cli_run(check, "deepspeed_zero2_bf16", "ds", [*common, *ds], 60, need_scale=False)

    # 7. fp16 with the dynamic loss scale (dry: fp32 on the CPU, no scale to record)
    fp16 = ["engine=cpu"] if dry else ["engine=gpu", "engine.mixed_precision=fp16"]
    cli_run(check, "fp16_loss_scale", "fp16", [*common, *fp16], 40, need_scale=not dry)

    ok = all(s["status"] == "ok" for s in check.steps.values())
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"benchmark": "gpu_check", "ok": ok, "dry_run": dry, "device": device,
                      "seconds": round(time.monotonic() - started, 1), "steps": check.steps}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
