"""Typed schema of every verb's configuration.

The YAML files under ``conf/`` give the values; these dataclasses give the types and the
documentation (each field's comment is what ``--help`` and the docs say about it).  A
composed config is checked against them by :func:`bert_ticket_cli.config.compose.validate`,
which reports every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ModelConfig:
    #: Short name used in run names and reports.
    name: str = "tiny"
    #: Hub id (``bert-base-uncased``) or a local model directory; None builds from ``config``.
    name_or_path: Optional[str] = None
    #: BertConfig keyword arguments for a model built from scratch, or overrides of the
    #: loaded config (e.g. ``hidden_dropout_prob: 0.0``).
    config: Optional[dict[str, Any]] = None
    #: Tokenizer: hub id or local dir; None = ``name_or_path``; ``synthetic`` = the word-level
    #: tokenizer of the generated task.
    tokenizer: Optional[str] = None
    #: Attention kernel: sdpa (default, fast) or eager.
    attn_implementation: str = "sdpa"


@dataclass
class SyntheticConfig:
    #: Examples in the generated train / validation / test splits.
    n_train: int = 2000
    n_validation: int = 400
    n_test: int = 200
    #: Words per sentence (min, max).
    min_len: int = 8
    max_len: int = 24
    #: Size of the neutral filler vocabulary.
    vocab_size: int = 200


@dataclass
class TaskConfig:
    #: Task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, squad, mlm, synthetic, or multi
    #: (rewind: several tasks sharing one encoder, see multitask.*).
    name: str = "synthetic"
    #: Local folder in the original GLUE TSV layout (train.tsv, dev.tsv, test.tsv) or SQuAD JSON.
    data_dir: Optional[str] = None
    #: Explicit files per split: {train: a.csv, validation: b.jsonl}.
    data_files: Optional[dict[str, str]] = None
    #: Hub dataset id; None = the task's default (nyu-mll/glue, rajpurkar/squad).
    hub_dataset: Optional[str] = None
    #: Tokens per example (longer inputs are truncated; SQuAD contexts are windowed).
    max_seq_length: int = 128
    #: SQuAD: overlap between context windows, in tokens.
    doc_stride: int = 128
    #: SQuAD: longest answer considered, in tokens.
    max_answer_length: int = 30
    #: mlm: fraction of a block's tokens selected for prediction, round(p x length), drawn
    #: among its non-special tokens (BERT: 0.15).
    mlm_probability: float = 0.15
    #: Use only the first N training / evaluation examples (None = all).
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    #: The generated task (only for name=synthetic).
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class TrainConfig:
    #: Passes over the training data (fractions allowed); ignored when max_steps is set.
    epochs: float = 3.0
    #: Optimizer steps to run; overrides epochs.
    max_steps: Optional[int] = None
    #: Global batch: examples per optimizer step over all processes and accumulation.
    batch_size: int = 32
    #: Examples per forward pass on one process; None = batch_size / processes.  The
    #: difference is made up by gradient accumulation.
    micro_batch_size: Optional[int] = None
    #: Peak learning rate (AdamW).
    lr: float = 2e-5
    #: AdamW weight decay (not on biases and LayerNorm weights).
    weight_decay: float = 0.01
    #: AdamW betas and epsilon.
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    #: Linear warm-up over this fraction of the steps (or warmup_steps when > 0).
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    #: Learning-rate schedule after warm-up: linear (to 0) or constant.
    schedule: str = "linear"
    #: Gradient clipping by global norm (0 = off).
    max_grad_norm: float = 1.0
    #: Evaluate every N optimizer steps; 0 = at the end of each epoch.
    eval_every: int = 0
    #: Log a line every N optimizer steps.
    log_every: int = 10
    #: Write a resumable checkpoint every N optimizer steps (0 = only at the end or on a signal).
    save_every: int = 0
    #: Checkpoints kept on disk (older ones are deleted once a newer one is complete).
    keep_checkpoints: int = 1
    #: Length-grouped batches: each global batch holds rows of similar length (mega-batches of
    #: 50 batches sorted by length, the batches then shuffled), so dynamic padding pads less.
    #: Still a pure function of (seed, epoch): exact resume, any process count.
    group_by_length: bool = False


@dataclass
class EngineConfig:
    #: cpu, gpu, ddp or deepspeed (a label; the launcher decides the process count).
    name: str = "cpu"
    #: no, bf16 or fp16 (fp16 only on CUDA).
    mixed_precision: str = "no"
    #: Force CPU even when CUDA is present (needed for gloo DDP on CPU under torchrun).
    cpu: bool = False
    #: DeepSpeed config (ZeRO stage, ...); None = no DeepSpeed.
    deepspeed: Optional[dict[str, Any]] = None
    #: DataLoader worker processes.
    num_workers: int = 0
    #: torch.compile the model for training (in place, nn.Module.compile: saved weights and
    #: checkpoints keep their plain parameter names). Off by default: the first steps pay the
    #: compilation (tens of seconds), and shapes that change (dynamic padding) recompile.
    compile: bool = False
    #: torch.compile backend (inductor; aot_eager / eager to debug).
    compile_backend: str = "inductor"


@dataclass
class EvalConfig:
    #: Model directory to evaluate (a run's ``model/`` or any HF model dir); None = model.name_or_path.
    checkpoint: Optional[str] = None
    #: Splits to evaluate; empty = the task's dev splits (MNLI: matched and mismatched).
    splits: list[str] = field(default_factory=list)
    #: Also write GLUE test-set predictions in the leaderboard TSV format.
    predict_test: bool = False
    #: Evaluation batch size per process.
    batch_size: int = 64
    #: Run the 2:4-pruned linear layers (a prune.pattern=2:4 ticket's model) with torch's
    #: semi-structured sparse kernels (CUDA compute capability >= 8.0, engine.mixed_precision
    #: bf16 / fp16); the masked dense model's metrics are recorded next to them.
    semi_structured: bool = False
    #: padded: also write the evaluated model as a plain full-size BERT (removed heads and
    #: neurons of a compacted model as exact zeros) under <run>/export/, loadable by plain
    #: transformers; None = no export.
    export: Optional[str] = None
    #: padded: also write the evaluated model as a plain full-size BERT (removed heads / neurons as zeros) to <run>/export/.
    export: Optional[str] = None  # padded


@dataclass
class TrackingConfig:
    """Experiment trackers, through Accelerate's (``metrics.jsonl`` stays the record; not part of
    a run's identity, so a tracker can be added to a resumed run)."""

    #: Trackers that also get the metrics: tensorboard, wandb, mlflow, aim, trackio (a list; one
    #: name alone works too). Each writes under <run>/tracking/.
    log_with: list[str] = field(default_factory=list)
    #: The trackers' project (W&B / Trackio project, MLflow experiment, TensorBoard subfolder).
    project: str = "bert-ticket"


@dataclass
class MethodConfig:
    """The ``method`` node: ``method=NAME`` picks ``conf/method/NAME.yaml``; the method's own
    settings live next to its name (``method.l1_heads=...``) and are checked against that
    method's dataclass (:data:`METHOD_SCHEMAS`)."""

    #: dense (no ticket), imp, omp, random, earlybert, super_tickets.
    name: str = "dense"


@dataclass
class DenseMethodConfig(MethodConfig):
    """No ticket: the full model."""

    name: str = "dense"


@dataclass
class ImpMethodConfig(MethodConfig):
    """Iterative magnitude pruning (its settings are under ``prune.*``)."""

    name: str = "imp"


@dataclass
class OmpMethodConfig(MethodConfig):
    """One-shot magnitude pruning at each of ``prune.sparsities``."""

    name: str = "omp"


@dataclass
class RandomMethodConfig(MethodConfig):
    """Random tickets at ``prune.sparsities`` (the random-pruning baseline)."""

    name: str = "random"


@dataclass
class SuperTicketsMethodConfig(MethodConfig):
    """Super tickets (``prune method=super_tickets``, Liang et al., ACL 2021): fine-tune, score
    every head and FFN unit by first-order importance, mask nested levels, train the winning,
    random and losing tickets of every level compacted from the pre-trained weights."""

    name: str = "super_tickets"

    #: Levels in (0, 1): level l masks round(l x heads) heads and round(10 l / 12 x layers) FFN
    #: sub-layers (the paper's grid: round(10 l) of BERT-base's 12).
    levels: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    #: Separate grids (one value per level, fractions masked); None = from ``levels``.
    head_levels: Optional[list[float]] = None
    ffn_levels: Optional[list[float]] = None
    #: layer: score and remove whole FFN sub-layers (the paper); neuron: single FFN neurons.
    ffn_unit: str = "layer"
    #: Divide each layer's head scores by their L2 norm before the global ranking.
    normalize_heads: bool = True
    #: Heads every layer keeps at every level.
    min_heads_per_layer: int = 1
    #: The tickets trained at every level: winning (lowest scores masked), random (same counts,
    #: drawn without replacement), losing (highest scores masked).
    kinds: list[str] = field(default_factory=lambda: ["winning", "random", "losing"])
    #: random tickets: the winning ticket's count in every layer (true) or one global draw (false).
    preserve_layer_ratio: bool = False
    #: Seed of the random tickets; None = the run's seed.
    random_seed: Optional[int] = None
    #: Batches of the importance pass (over the training split, in order); None = all of it.
    importance_batches: Optional[int] = None
    #: Train the tickets in this run (false: stop after the tickets are written; train them
    #: later with ``bert-ticket rewind ticket=...``).
    train_tickets: bool = True
    #: Which trained tickets keep their model/ folder (compacted, reloadable by eval): winning,
    #: all or none (the full model's is always kept: the importance pass reads it).
    save_models: str = "winning"


@dataclass
class EarlyBertMethodConfig(MethodConfig):
    """EarlyBERT (``prune method=earlybert``, ``pretrain method=earlybert``): search with slimming
    coefficients and L1, stop at the early bird, train the compacted model (Chen et al., ACL 2021)."""

    name: str = "earlybert"

    #: L1 weight on the attention-head coefficients and on the FFN-neuron coefficients.
    l1_heads: float = 1e-4
    l1_neurons: float = 1e-4
    #: Fraction of heads removed (per layer by default: 1/3 = 4 of 12) and of FFN neurons
    #: (over all layers by default: 40%).
    head_fraction: float = 0.3333333333
    neuron_fraction: float = 0.4
    #: layer (the same count in every layer) or global (one ranking over all layers).
    head_scope: str = "layer"
    neuron_scope: str = "global"
    #: Draw a ticket every N optimizer steps of the search.
    check_every: int = 10
    #: The early bird: the last ``window`` tickets all within ``threshold`` (normalised
    #: Hamming distance) of the newest.
    window: int = 5
    threshold: float = 0.1
    #: End the search when the early bird is found (false: search for search_steps and still
    #: record every check, e.g. for the full distance heatmap).
    stop_at_early_bird: bool = True
    #: Most optimizer steps of the search; None = the training budget (train.epochs/max_steps).
    search_steps: Optional[int] = None
    #: prune only: end the search after this fraction of an epoch, on the full budget's
    #: learning-rate schedule (the reference code draws its ticket from the coefficients at 0.2
    #: of the first epoch: search_epochs=0.2); no early bird by then: the ticket drawn there.
    search_epochs: Optional[float] = None
    #: prune only: epochs of the compact stage; None = train.epochs, the dense baseline's budget
    #: (the reference code retrains the ticket for 2 of the dense model's 3 epochs).
    compact_epochs: Optional[float] = None
    #: prune only: peak learning rate of the compact stage; None = train.lr (reference code: 4e-5,
    #: twice the search's 2e-5).
    compact_lr: Optional[float] = None
    #: Also fine-tune the dense model under the same budget (the time and accuracy baseline).
    dense_baseline: bool = True


#: method= name -> the dataclass its ``method.*`` settings are checked against.
METHOD_SCHEMAS: dict[str, type] = {
    "dense": DenseMethodConfig,
    "imp": ImpMethodConfig,
    "omp": OmpMethodConfig,
    "random": RandomMethodConfig,
    "earlybert": EarlyBertMethodConfig,
    "super_tickets": SuperTicketsMethodConfig,
}


@dataclass
class PruneConfig:
    """How tickets are found (``bert-ticket prune``)."""

    #: IMP: pruning rounds; level k trains the ticket with level_target(k) weights removed.
    levels: int = 9
    #: Fraction pruned per level: of the original weights (linear: 10%, 20%, ...) or of the
    #: remaining ones (geometric).
    rate: float = 0.1
    schedule: str = "linear"
    #: Stop once this sparsity is reached (overrides levels when set).
    target_sparsity: Optional[float] = None
    #: global: one magnitude threshold over all prunable matrices (the paper); layer: per matrix.
    scope: str = "global"
    #: The pooler is in the prunable set (BERT-Tickets' 85.5M weights for BERT-base).
    include_pooler: bool = True
    #: The prunable set as globs over parameter names relative to the base model, e.g.
    #: ["encoder.layer.*.attention.self.*.weight"]; None = the six matrices per layer + pooler.
    patterns: Optional[list[str]] = None
    #: Rewind point: 0 = the pre-trained weights (theta_0); "500it" or "0.5ep" = theta_i, the
    #: weights after that much fine-tuning.
    rewind: str = "0"
    #: Reset the task head to its initial values at every level (the reference code keeps the
    #: trained head from the previous level: set false to match it).
    reset_head: bool = True
    #: omp / random: the sparsities produced in one run.
    sparsities: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    #: N:M semi-structured tickets, e.g. "2:4": every group of M consecutive input weights keeps
    #: exactly N (sparsity 1 - N/M; one ticket: prune.sparsities does not apply and IMP needs
    #: prune.levels=1); None = unstructured.
    pattern: Optional[str] = None


@dataclass
class TicketConfig:
    """Which ticket a run trains (``rewind`` / ``transfer``)."""

    #: Ticket directory (tickets/level-NN of a prune run); None = the dense model.
    path: Optional[str] = None
    #: winning (as found), random (new random mask, same per-matrix counts), reinit (same mask,
    #: weights re-drawn from the model's initialiser).
    variant: str = "winning"
    #: Seed of the random / reinit variants.
    seed: int = 0


@dataclass
class MultiTaskConfig:
    """Multi-task learning with shared tickets (``bert-ticket rewind task=multi``): one encoder,
    a head per task, each task's batches and evaluation through its own structured ticket."""

    #: The tasks sharing the encoder (GLUE names, e.g. [sst2,mrpc,stsb,rte]); task.* settings
    #: (data_dir: a folder of GLUE task folders, max_seq_length, max_train_samples) apply to each.
    tasks: list[str] = field(default_factory=list)
    #: Which task each step's batch comes from: proportional (every batch of every task once
    #: per epoch, shuffled: MT-DNN), uniform, or temperature (p_t ~ n_t^(1/T)).
    sampling: str = "proportional"
    #: T of temperature sampling.
    temperature: float = 2.0
    #: Each task's structured ticket folder, e.g. {sst2: runs/prune/<run>/tickets/winning-0.30};
    #: a task named by neither this nor tickets_from trains dense.
    tickets: dict[str, str] = field(default_factory=dict)
    #: Pick the super ticket of every other task from the super-ticket runs under this folder
    #: (the winning level with the best dev mean over seeds; the ticket of this run's seed when
    #: there is one); None = none picked.
    tickets_from: Optional[str] = None


@dataclass
class TransferConfig:
    """The transfer matrix (``bert-ticket transfer``): every ticket trained on every task."""

    #: Ticket folders (rows of the matrix); empty = just ``ticket.path``.
    tickets: list[str] = field(default_factory=list)
    #: Target tasks (columns); empty = just ``task``.
    tasks: list[str] = field(default_factory=list)
    #: A folder of GLUE task folders (CoLA/, MRPC/, ...) for the matrix; None = each task's hub source.
    glue_dir: Optional[str] = None


@dataclass
class PretrainDataConfig:
    """The prepared pre-training data (``bert-ticket pretrain prepare``): packed blocks, K
    statically masked copies, a held-out validation split, as memory-mapped Arrow shards."""

    #: Text sources: files, folders (every .txt / .raw / .tokens / .jsonl / .json inside, sorted)
    #: or ``hub:NAME[:CONFIG]`` (a hub dataset's train split).
    corpus: list[str] = field(default_factory=list)
    #: Held-out text for validation (same forms); empty = hold out validation_fraction of the
    #: corpus's documents (chosen by the seed).
    validation: list[str] = field(default_factory=list)
    validation_fraction: float = 0.01
    #: Prepared-data folder; None = <cache_dir>/pretrain/<fingerprint of the settings>.
    dir: Optional[str] = None
    #: Tokenizer: ``model`` = model.tokenizer (or model.name_or_path); ``train`` = train a
    #: WordPiece tokenizer on the corpus (offline); or a hub id / local tokenizer folder.
    tokenizer: str = "train"
    #: Trained tokenizer: vocabulary size and lower-casing (BERT uncased: 30522, true).
    vocab_size: int = 30522
    lowercase: bool = True
    #: Tokens per sequence ([CLS] + sentences + [SEP]; 128 in the recipe).
    seq_length: int = 128
    #: Fraction of a sequence's tokens predicted, round(p x length), capped by max_predictions.
    mlm_probability: float = 0.15
    max_predictions: int = 20
    #: Duplication factor K: K copies of the corpus, each with its own static masks.
    duplication: int = 10
    #: Rows per Arrow shard file.
    shard_rows: int = 100000
    #: Rows per shuffle chunk when reading (the order is a permutation of chunks, then of rows
    #: inside each chunk: start-up cost does not grow with the corpus).
    shuffle_chunk: int = 65536


@dataclass
class EarlyStopConfig:
    #: Stop when validation MLM loss is still above ``loss`` once ``after`` of the budget is
    #: spent (a duration: 3h, 90min, 600s); None = never.
    loss: Optional[float] = None
    after: Optional[str] = None


@dataclass
class PretrainConfig:
    """Academic-budget MLM pre-training (``bert-ticket pretrain``; Izsak et al., EMNLP 2021)."""

    #: The prepared data (``bert-ticket pretrain prepare``).
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    #: Wall-clock budget of training (24h, 90min, 900s): the deadline, and the end of the LR decay.
    budget: str = "24h"
    #: wall: the schedule and the deadline follow elapsed time (the recipe); steps: they follow
    #: optimizer steps to train.max_steps (reproducible runs and tests).
    clock: str = "wall"
    #: Linear warm-up over this fraction of the budget, then linear decay to 0 at the budget.
    warmup_proportion: float = 0.06
    #: Validate (MLM loss / accuracy on the held-out split) every this much elapsed time (a
    #: duration) and at the end; also every train.eval_every steps when that is set.
    eval_every: str = "30min"
    #: Write a resumable checkpoint every this much elapsed time (and every train.save_every steps).
    save_every: str = "30min"
    #: Stop early when the validation loss is still above a threshold after a time.
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    #: Divergence stop: fp16 loss scale below this counts as collapsed.
    min_loss_scale: float = 1.0
    #: Validation sequences used (None = all of the held-out split).
    max_eval_samples: Optional[int] = 2000
    #: Start from random weights (scratch) or from model.name_or_path's weights (pretrained).
    init: str = "scratch"


@dataclass
class LocalLauncherConfig:
    #: Jobs of a sweep run at once on this machine (each in its own process).
    parallel: int = 1


@dataclass
class SlurmLauncherConfig:
    """``launcher=slurm``: one Slurm job array through submitit (the names of hydra-submitit-launcher)."""

    #: sbatch --partition / --qos / --account / --constraint / --exclude (None: the cluster's default).
    partition: Optional[str] = None
    qos: Optional[str] = None
    account: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    #: Time limit of each array task, in minutes (a task stopped at the limit is requeued and resumes).
    timeout_min: int = 60
    #: Nodes and processes per node of each job; several processes get RANK / WORLD_SIZE /
    #: MASTER_ADDR / MASTER_PORT exported for Accelerate.
    nodes: int = 1
    tasks_per_node: int = 1
    #: GPUs per node, CPUs per task, memory per node in GB (None: the cluster's default).
    gpus_per_node: Optional[int] = None
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None
    #: Array tasks running at once.
    array_parallelism: int = 256
    #: The requeue signal arrives this many seconds before the time limit.
    signal_delay_s: int = 120
    #: The requeue signal (submitit's default USR2: NCCL may catch USR1).
    signal: str = "USR2"
    #: Requeues after a time limit before a job counts as failed (pre-emptions do not count).
    max_num_timeout: int = 20
    #: Shell lines run in the sbatch script before the job (module load ..., source venv).
    setup: list[str] = field(default_factory=list)
    #: Further sbatch options, e.g. {mail-user: me@lab.org}.
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    #: Further srun arguments.
    srun_args: list[str] = field(default_factory=list)
    #: Block until every job of the sweep ended (false: return once submitted; report shows progress).
    wait: bool = True


@dataclass
class LauncherConfig:
    """Where the jobs of a sweep (``-m``) run: ``launcher=local`` or ``launcher=slurm``.  Not
    part of a run's identity; a single run (no ``-m``) runs here whatever it says."""

    #: local (this machine, one process per job) or slurm (one job array through submitit).
    name: str = "local"
    #: Sweep id: the manifest is <output_dir>/sweeps/<id>/sweep.yaml; None = <verb>-<date>-<time>.
    sweep_id: Optional[str] = None
    local: LocalLauncherConfig = field(default_factory=LocalLauncherConfig)
    slurm: SlurmLauncherConfig = field(default_factory=SlurmLauncherConfig)


@dataclass
class RunConfig:
    """The parts every training and evaluation verb shares (each verb's root schema below adds
    only the sections that verb uses)."""

    #: Set by the CLI: which verb composed this config.
    verb: str = "rewind"
    #: Seed of the weights drawn, the data order and dropout.
    seed: int = 42
    #: Root folder of all runs.
    output_dir: str = "runs"
    #: Run folder name under output_dir/<verb>/ (letters, digits and . _ + = -); None =
    #: <task>-<model>[-<method>]-s<seed>-<hash of the settings>.
    run_name: Optional[str] = None
    #: Continue an interrupted run from its last checkpoint: true, false, or auto (resume when
    #: an unfinished run with checkpoints exists, start otherwise, skip a finished one; what
    #: every sweep job uses).
    resume: Any = False
    #: Replace a finished run of the same name (otherwise it is reported and left alone).
    overwrite: bool = False
    #: Tokenized-data cache; None = ~/.cache/bert_ticket.
    cache_dir: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    #: Evaluation settings (also the evaluation after training).
    eval: EvalConfig = field(default_factory=EvalConfig)
    #: Experiment trackers (TensorBoard, W&B, ...) besides metrics.jsonl.
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    #: Where the jobs of a sweep (``-m``) run (``launcher=local|slurm``).
    launcher: LauncherConfig = field(default_factory=LauncherConfig)


@dataclass
class RewindRunConfig(RunConfig):
    """``bert-ticket rewind``: train a ticket (or the dense model), then evaluate."""

    verb: str = "rewind"
    #: The method (set from the ticket; dense without one).
    method: MethodConfig = field(default_factory=DenseMethodConfig)
    #: The ticket to train (``ticket=PATH`` is short for ``ticket.path=PATH``).
    ticket: TicketConfig = field(default_factory=TicketConfig)
    #: Multi-task learning with shared tickets (task=multi).
    multitask: MultiTaskConfig = field(default_factory=MultiTaskConfig)


@dataclass
class PruneRunConfig(RunConfig):
    """``bert-ticket prune``: find tickets with ``method=``."""

    verb: str = "prune"
    #: The ticket-finding method and its settings (``method=imp|omp|random|earlybert|super_tickets``).
    method: MethodConfig = field(default_factory=DenseMethodConfig)
    #: Ticket search settings of imp / omp / random.
    prune: PruneConfig = field(default_factory=PruneConfig)


@dataclass
class TransferRunConfig(RunConfig):
    """``bert-ticket transfer``: tickets found on one task trained on others."""

    verb: str = "transfer"
    #: The method (set from the ticket).
    method: MethodConfig = field(default_factory=DenseMethodConfig)
    #: The ticket to train (``ticket=PATH`` is short for ``ticket.path=PATH``).
    ticket: TicketConfig = field(default_factory=TicketConfig)
    #: Tickets x tasks.
    transfer: TransferConfig = field(default_factory=TransferConfig)


@dataclass
class PretrainRunConfig(RunConfig):
    """``bert-ticket pretrain``: MLM pre-training on a budget (method=dense or earlybert)."""

    verb: str = "pretrain"
    #: dense, or earlybert (EarlyBERT pre-training; its settings are ``method.*``).
    method: MethodConfig = field(default_factory=DenseMethodConfig)
    #: MLM pre-training on a budget.
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


@dataclass
class EvalRunConfig(RunConfig):
    """``bert-ticket eval``: evaluate a saved model."""

    verb: str = "eval"


@dataclass
class CacheRunConfig(RunConfig):
    """``bert-ticket cache``: download the model, tokenizer and task data a run with the same
    ``model`` / ``task`` settings loads, into the caches runs read, and check each loads offline."""

    verb: str = "cache"


@dataclass
class ReportConfig:
    """Schema of ``bert-ticket report``."""

    verb: str = "report"
    #: Root folder searched for summary.json files.
    output_dir: str = "runs"
    #: Filters, each key=value on a summary field; on the command line plain task=mrpc works;
    #: sweep=ID keeps the runs of one sweep (-m) and lists its jobs.
    where: list[str] = field(default_factory=list)
    #: Extra summary fields shown as columns (dotted paths, e.g. metrics.f1).
    columns: list[str] = field(default_factory=list)
    #: Sort by this column.
    sort: str = "run_dir"
    #: table (rich), csv or json.
    format: str = "table"
    #: runs: one row per run; tickets: per task and sparsity, mean +- std over seeds of the
    #: full model, IMP, OMP, random pruning and random re-init, with the matching verdicts;
    #: earlybert: per EarlyBERT run, early-bird step, search / compact / dense times, time saving,
    #: dense and random-ticket baselines; pretrain: per pre-training run, budget, elapsed time,
    #: steps, tokens/s, stop reason, final validation MLM loss / accuracy / perplexity;
    #: super_tickets: per experiment, ticket kind (full, winning, random, losing) and level,
    #: mean +- std over seeds, parameters kept, training time, the super ticket and whether it
    #: beats the full model; multitask: per multi-task experiment, dense MTL vs tickets-share,
    #: each task's metric, the average and the encoder fraction each task uses.
    view: str = "runs"
    #: Draw the papers' figures (sparsity -> metric curves, transfer heatmaps, EarlyBERT
    #: mask-distance heatmaps, pre-training loss vs elapsed time, super tickets' phase
    #: transition) as PNG files.
    plot: bool = False
    #: Where the PNG files go; None = <output_dir>/report.
    plot_dir: Optional[str] = None
    #: view=tickets / super_tickets: the metric of the means and verdicts (a key of the runs'
    #: metrics, e.g. f1, accuracy); None = each task's main metric.
    metric: Optional[str] = None


#: Which schema each verb's root config follows.
SCHEMAS: dict[str, type] = {
    "rewind": RewindRunConfig,
    "eval": EvalRunConfig,
    "prune": PruneRunConfig,
    "transfer": TransferRunConfig,
    "pretrain": PretrainRunConfig,
    "cache": CacheRunConfig,
    "report": ReportConfig,
}
