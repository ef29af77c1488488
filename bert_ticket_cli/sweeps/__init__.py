"""Sweeps: ``bert-ticket VERB -m key=a,b other=range(0,3) ...``.

- :mod:`.expand` expands the overrides with Hydra's override grammar (comma lists, ``range()``,
  ``choice()``, ``glob()``), composes and validates every job's config before anything starts
  (all problems on one line, exit 2) and names each job's run after its swept keys;
- :mod:`.manifest` writes ``<output_dir>/sweeps/<id>/sweep.yaml`` (jobs, overrides, Slurm ids,
  states, exit statuses) and reads it back for ``report``;
- :mod:`.job` is the one job function (:class:`~.job.SweepJob`): it runs ``python -m
  bert_ticket_cli VERB overrides...`` in its own process, records the job's state, and under
  Slurm honours submitit's checkpoint protocol (the requeue signal -> the run checkpoints and
  exits 75 -> this array task alone is requeued);
- :mod:`.launchers` runs the jobs: ``launcher=local`` (here, ``launcher.local.parallel`` at once)
  or ``launcher=slurm`` (one job array through submitit's ``map_array``).

Every job runs with ``resume=auto`` unless the command line says otherwise: a requeued or
resubmitted job resumes, a finished one is skipped.
"""

from bert_ticket_cli.sweeps.launchers import run_sweep

__all__ = ["run_sweep"]
