"""The base every training config shares (`configs/sft.py`, `kd.py`, `gkd.py`, `classkd.py`,
`seqkd.py`, `distillm.py`, `minillm.py`).

Not a config itself: each method file calls `method_config(method, arg)` and
then sets its own defaults. Every method's config has every key below (the
trainer's contract), whether or not its method reads it; a `misfeedback.*` or
`classmate.*` override the method would ignore is refused (`checks.refuse_unused`).

Variants (the argument after the colon, `--config configs/classkd.py:ARG`):
- `size=tiny`: random-init tiny Llama-style presets (teacher 2 layers d=32,
  student and classmate 2 layers d=16) on the built-in synthetic task, a few
  steps: runs in seconds on a CPU (what the tests run).
- `pair=T/S` (the default is `pair=gpt2-xl/gpt2`): a teacher/student pair on
  Dolly (MiniLLM's `data/dolly` layout under `data.data_dir`) with the
  protocol's hyper-parameters (DistiLLM's GPT-2 recipes: AdamW, weight decay
  0.01, clip 1.0, cosine without warm-up, prompts <= 256 tokens, sequences
  <= 512, 256 new tokens). Pairs: gpt2-xl/gpt2, gpt2-xl/gpt2-medium,
  gpt2-xl/gpt2-large, qwen2.5-7b/qwen2.5-1.5b, qwen2.5-7b/qwen2.5-0.5b,
  llama-3.2-3b/llama-3.2-1b, and the 2026 families qwen3-8b/qwen3-0.6b,
  qwen3-8b/qwen3-1.7b, gemma-3-12b/gemma-3-1b, gemma-2-9b/gemma-2-2b,
  llama-3.1-8b/llama-3.2-1b (`PAIR_DEFAULTS` below: bfloat16 compute, FSDP
  over every chip, `remat=full`). Checked with `python -m classkd_jax.compile
  --topology ...` (docs/models.md, "What the pairs need"): every GPT-2, Qwen and Llama
  pair fits a v5e:4x4 slice (the first six also 8 x H100); the Gemma pairs
  do not fit v5e:4x4 and fit v5p:2x2x2 or 8 x H100. Paths default to the Hugging Face hub names;
  the protocol distils from a teacher fine-tuned on Dolly and starts the
  student from its SFT checkpoint: point `teacher.path` / `student.path` at
  them (docs/training.md).

Durations: `steps` optimizer steps; `steps=0` with `epochs=E` trains E
passes over the training rows (converted once the data is loaded, and the
resolved `steps` is what `config.json` records).
"""

import ml_collections
from ml_collections import config_dict

from classkd_jax.config_utils import import_sibling, parse_arg

METHODS = ("sft", "kd", "gkd", "classkd", "seqkd", "distillm", "minillm")

# teacher preset, student preset, and the recipe's optimizer settings and global batch.
PAIRS = {
    "gpt2-xl/gpt2": dict(teacher="gpt2-xl", student="gpt2", lr=5e-4, epochs=20.0, batch=64),
    "gpt2-xl/gpt2-medium": dict(
        teacher="gpt2-xl", student="gpt2-medium", lr=5e-4, epochs=20.0, batch=64
    ),
    "gpt2-xl/gpt2-large": dict(
        teacher="gpt2-xl", student="gpt2-large", lr=1e-4, epochs=10.0, batch=32
    ),
    "qwen2.5-7b/qwen2.5-1.5b": dict(
        teacher="qwen2.5-7b", student="qwen2.5-1.5b", lr=1e-5, epochs=3.0, batch=64
    ),
    "qwen2.5-7b/qwen2.5-0.5b": dict(
        teacher="qwen2.5-7b", student="qwen2.5-0.5b", lr=2e-5, epochs=3.0, batch=64
    ),
    "llama-3.2-3b/llama-3.2-1b": dict(
        teacher="llama-3.2-3b", student="llama-3.2-1b", lr=1e-5, epochs=3.0, batch=64
    ),
    "llama-3.1-8b/llama-3.2-1b": dict(
        teacher="llama-3.1-8b", student="llama-3.2-1b", lr=1e-5, epochs=3.0, batch=64
    ),
    "qwen3-8b/qwen3-0.6b": dict(
        teacher="qwen3-8b", student="qwen3-0.6b", lr=2e-5, epochs=3.0, batch=64
    ),
    "qwen3-8b/qwen3-1.7b": dict(
        teacher="qwen3-8b", student="qwen3-1.7b", lr=1e-5, epochs=3.0, batch=64
    ),
    "gemma-3-12b/gemma-3-1b": dict(
        teacher="gemma-3-12b", student="gemma-3-1b", lr=1e-5, epochs=3.0, batch=64, add_bos=True
    ),
    "gemma-2-9b/gemma-2-2b": dict(
        teacher="gemma-2-9b", student="gemma-2-2b", lr=1e-5, epochs=3.0, batch=64, add_bos=True
    ),
}
# How every pair runs on accelerators unless its entry says otherwise (checked by
# `python -m classkd_jax.compile` on the slices of docs/models.md: benchmarks/bench_compile.py).
# Precision as MaxText's dtype / weight_dtype: bfloat16 compute; float32 params (and so
# float32 Adam moments) for the trained roles; the frozen teacher's params in bfloat16;
# softmaxes and divergences in float32 (the losses' logits are float32). FSDP over the
# whole slice (rows split over it too); the trained roles' blocks rematerialised ('full':
# with 'dots', ClassKD's on-policy step of qwen2.5-7b/1.5b needs 17.3 GiB a v5e chip).
PAIR_DEFAULTS = dict(
    dtype="bfloat16", teacher_param_dtype="bfloat16", remat="full", mesh=(1, -1, 1), grad_accum=1
)
HUB = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "qwen3-8b": "Qwen/Qwen3-8B",
    # Gemma 3 4B and larger are image-text checkpoints; their text model is read.
    "gemma-3-1b": "google/gemma-3-1b-pt",
    "gemma-3-12b": "google/gemma-3-12b-pt",
    "gemma-2-2b": "google/gemma-2-2b",
    "gemma-2-9b": "google/gemma-2-9b",
}
DEFAULT_PAIR = "gpt2-xl/gpt2"
# Model fields a random-init role may override (None: the preset's value).
SHAPE_FIELDS = {
    "hidden_size": int,
    "num_layers": int,
    "num_heads": int,
    "num_kv_heads": int,
    "head_dim": int,
    "intermediate_size": int,
    "max_position_embeddings": int,
    "rope_theta": float,
    "tie_word_embeddings": bool,
}


def _shape(**values) -> ml_collections.ConfigDict:
    fields = {k: config_dict.placeholder(t) for k, t in SHAPE_FIELDS.items()}
    for key, value in values.items():
        fields[key] = value
    return ml_collections.ConfigDict(fields)


def _model(preset: str, path: str = "", dtype: str = "float32", **shape):
    """A role: where its weights come from and the model it is."""
    return ml_collections.ConfigDict(
        {
            "path": path,  # HF dir / hub name / classkd-jax checkpoint; '' = preset, random init
            "checkpoint_role": "student",  # which model of a classkd-jax checkpoint `path` holds
            "preset": preset,  # classkd_jax.models.PRESETS key (random init)
            "shape": _shape(**shape),  # preset field overrides for random init
            "dtype": dtype,  # compute dtype
            "param_dtype": "float32",
            "remat": "none",  # what blocks keep for the backward pass: 'none' | 'full' | 'dots'
        }
    )


def _optimizer(role: ml_collections.ConfigDict, lr: float) -> None:
    """A trainable role's optimizer block (AdamW), in place."""
    role.lr = lr
    role.schedule = "cosine"  # 'cosine' | 'linear' | 'constant' after the warm-up
    role.warmup_steps = 0
    role.final_lr_ratio = 0.0  # lr at the end of the decay, as a fraction of `lr`
    role.weight_decay = 0.01  # on matrices only (not norms, biases)
    role.b1 = 0.9
    role.b2 = 0.999
    role.eps = 1e-8
    role.clip = 1.0  # global-norm clipping; 0 = off
    # Dropout of its training forward: None = the model's own rates (a Hugging
    # Face config.json's embd/attn/resid_pdrop or attention_dropout; 0 for a
    # preset); a number sets all three rates. The teacher and every sampling,
    # scoring and validation pass run without dropout.
    role.dropout = config_dict.placeholder(float)


def _data(source: str):
    return import_sibling(__file__, "data").get_config(f"source={source}")


def _tiny(c: ml_collections.ConfigDict) -> None:
    c.steps = 6
    c.log_every = 2
    c.eval_every = 6
    c.checkpoint_every = 3
    c.data.synthetic.num_train = 512
    c.data.synthetic.num_dev = 16
    c.data.synthetic.num_test = 16
    c.data.batch_size = 8
    c.data.eval_batch_size = 8
    c.data.max_length = 128
    c.data.max_prompt_length = 112
    c.data.length_buckets = (128,)
    c.data.prompt_buckets = (112,)
    teacher = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
    c.teacher = _model("tiny-llama", **teacher, intermediate_size=64)
    small = dict(hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=8)
    c.student = _model("tiny-llama", **small, intermediate_size=32)
    c.classmate = _model("tiny-llama", **small, intermediate_size=32)
    for role in ("student", "classmate"):
        _optimizer(c[role], 3e-3)
        c[role].final_lr_ratio = 0.1
    c.sampling.max_new_tokens = 16
    c.seqkd.batch_size = 64
    c.distillm.init_phi = 0.5  # the reference starts at 0; tiny runs exercise the machinery
    c.distillm.capacity = 16
    c.minillm.num_rollouts = 16
    c.minillm.ppo_epochs = 2
    c.eval.num_examples = 8
    c.eval.max_new_tokens = 16
    c.eval.batch_size = 8


def _pair(c: ml_collections.ConfigDict, name: str) -> None:
    if name not in PAIRS:
        raise ValueError(f"pair={name!r}; expected one of {sorted(PAIRS)}")
    p = {**PAIR_DEFAULTS, **PAIRS[name]}
    dtype = p["dtype"]
    c.steps = 0
    c.epochs = p["epochs"]
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = p["mesh"]
    c.data.batch_size = p["batch"]
    c.data.add_bos = p.get("add_bos", False)  # Gemma is trained with <bos> first
    c.grad_accum = p["grad_accum"]
    c.teacher = _model(p["teacher"], HUB[p["teacher"]], dtype)
    c.teacher.param_dtype = p["teacher_param_dtype"]
    c.student = _model(p["student"], HUB[p["student"]], dtype)
    c.classmate = _model(p["student"], "", dtype)  # '' = the student's initial weights
    for role in ("student", "classmate"):
        _optimizer(c[role], p["lr"])
        c[role].remat = p["remat"]
    c.loss.impl = "chunked"


def _classmate_dynamics(role: ml_collections.ConfigDict) -> None:
    """The classmate's pace, in place (first-class config: the write-up stresses it)."""
    role.start_step = 0  # first step at which it may update
    role.update_every = 1  # update on every k-th step from start_step
    role.stop_step = 0  # no updates from this step on; 0 = never stops
    role.min_gap = 0.0  # update only while KL(p||c) - KL(p||q) >= min_gap; < 0 = off
    role.gap_ema = 0.9  # running average of both KLs, for the gap control
    role.divergence = "forward_kl"  # its off-policy loss to the teacher


def method_config(method: str, arg: str | None) -> ml_collections.ConfigDict:
    """The unlocked base config of `method` for the variant `arg` (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {METHODS}")
    arg = parse_arg(arg, size="full", pair="")
    if arg.size not in ("full", "tiny"):
        raise ValueError(f"size={arg.size!r}; expected 'full' or 'tiny'")
    if arg.size == "tiny" and arg.pair:
        raise ValueError("size=tiny uses random-init tiny presets; drop pair=")
    c = ml_collections.ConfigDict()
    c.method = method
    c.seed = 0
    c.steps = 1000  # optimizer steps (0: from `epochs`)
    c.epochs = 0.0  # used only when steps == 0
    c.grad_accum = 1  # micro-batches per optimizer step (token means stay exact)
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.log_every = 50
    c.eval_every = 500  # 0 = no validation
    c.eval_every_epochs = 0.0  # > 0: validate every this many epochs instead of eval_every
    c.checkpoint_every = 500
    c.checkpoint_keep = 3  # last k checkpoints kept (plus the best, under best/)
    c.best_metric = "dev_rougeL"  # 'dev_rougeL' (higher is better) or 'dev_loss' (lower)
    c.tokenizer = ""  # '' = the student's directory's, else the synthetic tokenizer
    c.peak_tflops = 0.0  # per-device peak for MFU; 0 = from the table of known devices
    c.progress = True  # progress bar (a line per log step when stderr is not a terminal)
    # A directory for JAX's persistent compilation cache ('' = off): a rerun, a
    # resumed run or a sweep over schedule values then skips the compiles.
    c.compilation_cache = ""
    c.data = _data("synthetic" if arg.size == "tiny" else "dolly")

    c.loss = ml_collections.ConfigDict(
        {
            "impl": "auto",  # 'dense' | 'chunked' | 'auto' (chunked above dense_max_vocab)
            "chunk_size": 128,  # tokens per chunk of the chunked losses (benchmarks/README.md)
            "dense_max_vocab": 16384,
        }
    )
    c.sampling = ml_collections.ConfigDict(
        {
            "max_new_tokens": 256,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 0,
            "batch_size": 0,  # prompts per on-policy batch; 0 = data.batch_size
            # Where the decoded models' weights live while sampling (every sampler of
            # the run: on-policy, teacher-mixed, SeqKD's teacher, validation):
            # 'tensor' | 'replicated' | 'train' (classkd_jax.sharding.decode_rules).
            "decode_layout": "tensor",
        }
    )
    c.kd = ml_collections.ConfigDict(
        {"divergence": "forward_kl", "temperature": 1.0, "ce_weight": 0.0}
    )
    c.gkd = ml_collections.ConfigDict(
        # replay: DistiLLM's mixed-jsd schedule: an on-policy step pushes its
        # samples into a replay buffer (sized by distillm.capacity[_batches]) and
        # trains on a uniform batch drawn from it (configs/gkd.py recipe=distillm).
        {"lmbda": 0.5, "beta": 0.5, "temperature": 1.0, "seq_kd": False, "replay": False}
    )
    # ClassKD's on-policy terms (D_on and the misfeedback): `estimator='token'`
    # is the token-level surrogate of the write-up's sequence-level expectations
    # (per-position KL on sampled prefixes, no gradient through sampling: same
    # value in expectation, not the same gradient); 'sequence' estimates the
    # sequence-level KL(q||p) and -KL(q||c) gradients by REINFORCE with a batch
    # baseline (configs/classkd.py, losses/reinforce.py, docs/estimators-classkd.md).
    c.classkd = ml_collections.ConfigDict(
        {
            "off_policy_divergence": "forward_kl",  # on dataset responses
            "on_policy_divergence": "reverse_kl",  # on the student's samples
            "off_policy_weight": 1.0,
            "on_policy_weight": 1.0,
            "lmbda": 1.0,  # probability that a step also trains on fresh samples
            "temperature": 1.0,  # loss temperature
            "estimator": "token",  # on-policy terms: 'token' (surrogate) | 'sequence' (REINFORCE)
        }
    )
    # ClassKD's misfeedback term (configs/classkd.py sets weight 0.1). On GKD,
    # DistiLLM and MiniLLM, weight > 0 adds it on the student's samples with a
    # classmate trained as ClassKD's (their `+mf` variant, docs/baselines.md);
    # 0 is the plain method. Elsewhere these keys and `classmate` are refused if set.
    c.misfeedback = ml_collections.ConfigDict(
        {
            "weight": 0.0,
            "variant": "skew",  # 'raw' | 'skew' | 'hinge' | 'sigmoid'
            "start_step": 0,  # weight 0 before this step
            "warmup_steps": 0,  # then a linear ramp to `weight` over this many steps
            "alpha": 0.1,  # skew
            "margin": 1.0,  # hinge, nats
            "beta": 1.0,  # sigmoid
        }
    )
    # The pre-training term on the plain-text stream `data.lm_path` (MiniLLM, DistiLLM).
    c.lm = ml_collections.ConfigDict({"coef": 1.0, "kd_ratio": 0.5})
    c.distillm = ml_collections.ConfigDict(
        {
            "divergence": "skew_forward_kl",  # 'skew_forward_kl' | 'skew_reverse_kl'
            "alpha": 0.1,  # the skew
            "stop_grad_mixture": False,  # True: no gradient through the q inside the mixture
            "kd_ratio": 1.0,  # loss = kd_ratio * skew KD + (1 - kd_ratio) * CE
            "temperature": 1.0,  # loss temperature
            "adaptive": True,  # phi rises with the validation loss (needs eval_every > 0)
            "init_phi": 0.0,  # the off-policy (sampling) probability phi at the start
            "phi_step": 0.1,  # phi += phi_step when the dev loss rose by loss_threshold
            "loss_threshold": 0.1,
            "capacity": 1000,  # replay buffer rows (held on the host, checkpointed)
            "capacity_batches": 0.0,  # > 0: the buffer holds this many global batches instead
        }
    )
    c.minillm = ml_collections.ConfigDict(
        {
            "teacher_mix": 0.2,  # rollouts from mix * p + (1 - mix) * q
            "num_rollouts": 256,  # rollouts per phase (a multiple of both batch sizes)
            "ppo_epochs": 4,  # passes over each phase's rollouts
            "clip_ratio": 0.2,
            "gamma": 0.95,
            "length_norm": True,  # advantages divided by the remaining response length
            "whiten": True,  # advantages whitened over the minibatch
            "reward_scaling": 0.5,  # r = (log p - log q) / reward_scaling, clipped
            "reward_clip": 100.0,
            "single_step": True,  # add the exact token-level KL(q_t || p_t) term
            "temperature": 1.0,  # loss temperature
        }
    )
    # SeqKD: the teacher answers every training prompt once (sampling.* settings),
    # cached in cache_dir ('' = DIR/seqkd) and reused by reruns.
    c.seqkd = ml_collections.ConfigDict(
        {"greedy": False, "seed": 0, "batch_size": 16, "chunk_prompts": 1024, "cache_dir": ""}
    )
    c.eval = ml_collections.ConfigDict(
        {"num_examples": 500, "max_new_tokens": 256, "batch_size": 16}
    )
    if arg.size == "tiny":
        _tiny(c)
    else:
        _pair(c, arg.pair or DEFAULT_PAIR)
    _classmate_dynamics(c.classmate)
    # An offline teacher (docs/teacher_cache.md): a directory written by
    # `python -m classkd_jax.teacher_cache --config <this config> --out DIR`.
    # Set, KD's loss reads the teacher from it and the teacher's weights are
    # never loaded; '' = the live teacher. Refused on methods that cannot use it.
    c.teacher.cache = ""
    c.teacher_cache = ml_collections.ConfigDict(
        {
            # N draws per position from p at the loss temperature. 64: on the testbed
            # ClassKD from a cache of 16 draws scored 0.78 below live ClassKD (3
            # seeds), of 64 0.08 below; KD matched live from either. 64 draws store
            # 43 bytes a position there, 16 draws 33 (benchmarks/README.md).
            "num_samples": 64,
            "top_k": 0,  # also store the k most likely ids and log-probs (0: none)
            "seed": 0,  # the draws' seed (not the run's: one cache serves every seed)
            # the run's loss from the cache: 'sampled' (unbiased, the draws) or 'topk'
            # (the anchors' top-k + residual bucket; needs top_k > 0)
            "loss": "sampled",
            # weights of the sampled loss: 'counts' (c / N) or 'horvitz_thompson'
            # (p / P(drawn), exact on confident ids); both unbiased. The default: on
            # the testbed its KD gradient is half as far from the dense one (9.7 vs
            # 18.3 degrees a batch) and its KD run scored as live KD's (benchmarks/README.md)
            "weights": "horvitz_thompson",
            "chunk_examples": 1024,  # examples per chunk file (the unit a rerun resumes at)
            "batch_rows": 8,  # rows of the teacher's forward while building
            "positions_per_group": 256,  # positions whose [G, V] logits are formed at once
        }
    )
    _cross_tokenizer(c)
    return c


def _cross_tokenizer(c: ml_collections.ConfigDict) -> None:
    """A teacher with another tokenizer (word-level KD only so far, docs/models.md)."""
    # '' = the student's tokenizer (one shared vocabulary: token-level losses). A
    # tokenizer directory or hub name: the teacher reads its own tokenisation of
    # every example, aligned to the student's on the host (classkd_jax/data/alignment.py).
    c.teacher.tokenizer = ""
    c.teacher.template = ""  # the teacher's prompt template ('' = data.template)
    # BOS first in the teacher's prompts (None = data.add_bos): e.g. True for a Gemma
    # teacher of a student that takes none; the alignment covers responses only.
    c.teacher.add_bos = config_dict.placeholder(bool)
    c.cross_tokenizer = ml_collections.ConfigDict(
        # 'alm': chunk log-likelihoods, binarised KL (ALM); 'exact': KL over the
        # entries spelled alike on one-token chunks (GOLD's exact match);
        # 'projected': KL at chunk starts to the teacher's distribution carried onto
        # the student's vocabulary by first tokens; 'uld': sorted-probability L1 at
        # chunk starts (ULD). docs/method.md has the formulas.
        # binarization_temp: ALM's tau, the chunk probabilities binarised as
        # exp(S / tau) (1: as they are; the ALM reference trains at 100).
        # inner_ce (KD, ClassKD; exact, projected or uld): the dataset rows' columns
        # the loss leaves unscored (inside a chunk) train on the dataset token, so
        # every column of the answer has a term (a mean over all of them).
        {"loss": "alm", "binarization_temp": 1.0, "inner_ce": False}
    )
