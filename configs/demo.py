"""The demo scale: every method on the built-in synthetic task, from the shipped
teacher and student initialisation, in CPU-minutes.

    python -m classkd_jax.train --config configs/demo.py:method=classkd --workdir runs/d
    python -m classkd_jax.compare --config configs/demo.py --methods sft,gkd,classkd \\
        --seeds 3 --workdir runs/compare
    python -m classkd_jax.demo --workdir runs/demo      # what launch/demo.sh runs

Variants (`configs/demo.py:ARG`, comma-separated):
- `method=M` (default classkd): any of configs/_base.py's METHODS, with that
  method file's own defaults (e.g. GKD samples at temperature 0.9).
- `role=` (default): distil, on the first 2000 train examples (the
  distillation set, `DISTILLATION_SET`). The teacher (4 layers, d=128, 1.18 M
  params, the vocabulary's 512 x 128 embedding and head included) and the
  student's SFT initialisation (2 layers, d=64, 0.20 M, 5.9x smaller), both
  trained on all 20000 train examples, are the Hugging Face directories
  shipped in `classkd_jax/assets/demo/` (`classkd_jax.demo.shipped()`); the
  classmate starts from the student's initial weights.
- `role=teacher` / `role=student_init` (with `method=sft`): how those two
  were made, from random init, by `python -m classkd_jax.train` (docs/testbed.md,
  "The shipped models"; `python -m classkd_jax.demo --retrain` runs both).
- `teacher_tokenizer=sp`: the cross-tokenizer testbed (docs/testbed.md,
  "Teachers with another tokenizer"). With `role=teacher` it trains the same
  teacher on the second shipped tokenizer (`classkd_jax/assets/synthetic_tokenizer_sp`,
  a 768-entry SentencePiece-style BPE); without a role the student (the shipped
  512-entry byte-level init, unchanged) distils from that teacher
  (`assets/demo/teacher_sp`) through `teacher.tokenizer`, with `method=kd`,
  `gkd` or `classkd` and `cross_tokenizer.loss`. Rows then hold one example
  each (`data.pack=False`, which the cross-tokenizer path needs), 64 a step so
  that a step still reads about as many examples as the packed 32. With
  `method=seqkd` the student trains on the text of that teacher's answers, on
  packed rows as without it.
  `teacher_tokenizer=spw`: the same with the third shipped tokenizer
  (`synthetic_tokenizer_spw`, whitespace a boundary as in real SentencePiece
  families, so the two share every word boundary; its teacher
  `assets/demo/teacher_spw`).
- `size=tiny`: the same shape of run with the tiny presets and a few steps
  (what the tests run); the tiny roles train from scratch.

The ClassKD settings below were chosen on the dev split only (docs/testbed.md);
the test split (600 examples, disjoint from train and dev) is what the demo
and `compare` report.
"""

from pathlib import Path

import ml_collections

from classkd_jax.config_utils import import_sibling, parse_arg

ROLES = ("", "teacher", "student_init")
ASSETS = Path(__file__).resolve().parents[1] / "classkd_jax" / "assets" / "demo"
# teacher_tokenizer=sp|spw: the second tokenizer of the cross-tokenizer testbed
TEACHER_TOKENIZERS = {
    "sp": ASSETS.parent / "synthetic_tokenizer_sp",  # pieces run across words
    "spw": ASSETS.parent / "synthetic_tokenizer_spw",  # pieces stop at words
}
CROSS_METHODS = ("kd", "gkd", "classkd", "seqkd")  # the methods that take teacher.tokenizer
TEACHER = dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4, head_dim=32,
               intermediate_size=512)  # fmt: skip
STUDENT = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16,
               intermediate_size=256)  # fmt: skip
STEPS = {"teacher": 1200, "student_init": 800, "": 200}
DISTILLATION_SET = 2000
# Distillation's learning rate is 1e-3 for every method but these, chosen on dev
# (docs/testbed.md): SFT at 1e-3 falls below its init (dev ROUGE-L 60.53; 64.87
# at 1e-4), SeqKD, which is SFT on the teacher's answers (60.17 at 1e-3, 64.17 at
# 1e-4), and MiniLLM (65.51 at 1e-3, 67.76 at 1e-4), whose reference recipe runs at a
# far smaller rate than the other methods'.
STUDENT_LR = {"sft": 1e-4, "seqkd": 1e-4, "minillm": 1e-4}


def _random(role: ml_collections.ConfigDict, shape: dict) -> None:
    """A random-init tiny-llama role of `shape`, in place."""
    role.path = ""
    role.preset = "tiny-llama"
    for key, value in shape.items():
        role.shape[key] = value


def _demo_scale(c: ml_collections.ConfigDict, role: str) -> None:
    c.steps = STEPS[role]
    c.log_every = 25
    c.checkpoint_every = 100
    c.checkpoint_keep = 1
    # Distillation runs are scored on the test split afterwards (compare / demo);
    # the shipped models' runs track dev ROUGE-L on the way.
    c.eval_every = 400 if role else 0
    # The shipped models read the 20000-example train split; a distillation run reads
    # its first 2000 (the distillation set), seen for several epochs. Dev and test
    # never change (docs/testbed.md).
    c.data.synthetic.num_train = DISTILLATION_SET if not role else 20000
    c.data.synthetic.num_dev = 500
    c.data.synthetic.num_test = 600
    c.data.batch_size = 32  # packed rows of 160 tokens, about 2 examples each
    c.data.eval_batch_size = 64
    c.data.max_length = 160
    c.data.max_prompt_length = 128
    c.data.length_buckets = (160,)
    c.data.prompt_buckets = (128,)
    c.sampling.max_new_tokens = 48  # every synthetic answer is <= 48 tokens
    c.sampling.batch_size = 32
    c.eval.num_examples = 200
    c.eval.max_new_tokens = 48
    c.eval.batch_size = 100
    lr = {"teacher": 3e-3, "student_init": 3e-3, "": 1e-3}[role]
    for name in ("student", "classmate"):
        c[name].lr = lr
        c[name].warmup_steps = 100 if role else 0
        c[name].final_lr_ratio = 0.01 if role else 0.1
    if role == "teacher":
        _random(c.student, TEACHER)
    elif role == "student_init":
        _random(c.student, STUDENT)
    else:  # the shapes are the shipped models' (recorded for config.json; paths win)
        _random(c.teacher, TEACHER)
        _random(c.student, STUDENT)
        _random(c.classmate, STUDENT)
        c.teacher.path = str(ASSETS / "teacher")
        c.student.path = str(ASSETS / "student_init")
        c.classmate.path = ""  # the student's initial weights


def _classkd(c: ml_collections.ConfigDict) -> None:
    """ClassKD's demo settings (chosen on dev; see the sweep in docs/comparing.md)."""
    c.classkd.lmbda = 0.5  # on-policy share, as GKD's
    c.misfeedback.weight = 0.1
    c.misfeedback.variant = "skew"
    c.classmate.update_every = 4
    c.classmate.min_gap = 0.0


def _baselines(c: ml_collections.ConfigDict) -> None:
    """The baselines' own machinery at demo scale (their reference values otherwise)."""
    c.seqkd.batch_size = 256  # the teacher answers the 2000 prompts once, shared by seeds
    # The 7B recipe's start (the GPT-2 recipes start at 0). From 0 its dev loss never
    # rose by 0.1 in 200 steps, so phi stayed 0 and it never sampled (dev, one seed:
    # ROUGE-L 67.19 at 0, 66.99 at 0.2 with 34 sampled and 10 replayed steps).
    c.distillm.init_phi = 0.2
    c.distillm.capacity = 1000
    c.minillm.num_rollouts = 64  # a phase: 64 rollouts, 4 epochs of 2 minibatches of 32
    c.minillm.ppo_epochs = 4


def get_config(arg=None):
    """Returns the locked demo config; `arg`: see the module docstring."""
    base = import_sibling(__file__, "_base")
    arg = parse_arg(arg, method="classkd", role="", size="demo", teacher_tokenizer="")
    if arg.method not in base.METHODS:
        raise ValueError(f"configs/demo.py: method={arg.method!r}; expected one of {base.METHODS}")
    if arg.role not in ROLES:
        raise ValueError(f"configs/demo.py: role={arg.role!r}; expected one of {ROLES}")
    if arg.role and arg.method != "sft":
        raise ValueError(f"configs/demo.py: role={arg.role} is trained by SFT; use method=sft")
    if arg.size not in ("demo", "tiny"):
        raise ValueError(f"configs/demo.py: size={arg.size!r}; expected 'demo' or 'tiny'")
    _check_teacher_tokenizer(arg)
    c = import_sibling(__file__, arg.method).get_config("size=tiny")
    c.unlock()
    c.gkd.lmbda = 0.5
    if arg.method == "classkd":
        _classkd(c)
    if arg.size == "demo":
        _demo_scale(c, arg.role)
        _baselines(c)
    else:  # the tiny presets; the roles' runs make a tiny teacher / student init
        c.data.synthetic.num_test = 32
        c.sampling.batch_size = 8
        c.eval_every = 0
        if arg.role == "teacher":
            c.student.shape = c.teacher.shape
    if arg.size == "demo" and not arg.role and arg.method in STUDENT_LR:
        c.student.lr = STUDENT_LR[arg.method]
    if arg.method == "distillm" and not arg.role:  # its adaptive schedule reads the dev loss
        c.eval_every = 50 if arg.size == "demo" else 3
        c.eval.num_examples = 0  # dev loss only: no dev generation
    if arg.teacher_tokenizer:
        _teacher_sp(c, arg)
    c.lock()
    return c


def _check_teacher_tokenizer(arg: ml_collections.ConfigDict) -> None:
    name = arg.teacher_tokenizer
    if name and name not in TEACHER_TOKENIZERS:
        raise ValueError(
            f"configs/demo.py: teacher_tokenizer={name!r}; expected one of"
            f" {'|'.join(TEACHER_TOKENIZERS)}"
        )
    if name and arg.role == "student_init":
        raise ValueError(f"configs/demo.py: teacher_tokenizer={name} takes role=teacher or no role")
    if name and not arg.role and arg.method not in CROSS_METHODS:
        raise ValueError(
            f"configs/demo.py: teacher_tokenizer={name} distils with method="
            f"{'|'.join(CROSS_METHODS)}, not {arg.method}"
        )


def _teacher_sp(c: ml_collections.ConfigDict, arg: ml_collections.ConfigDict) -> None:
    """The cross-tokenizer testbed: the teacher reads a SentencePiece-style tokenizer."""
    tokenizer = TEACHER_TOKENIZERS[arg.teacher_tokenizer]
    if arg.role == "teacher":  # trained from random init on that tokenizer
        c.tokenizer = str(tokenizer)
        return
    if arg.size == "demo":
        c.teacher.path = str(ASSETS / f"teacher_{arg.teacher_tokenizer}")
        c.teacher.tokenizer = c.teacher.path
    else:  # the tiny teacher is random-init: only its tokenizer is the second one
        c.teacher.tokenizer = str(tokenizer)
    if arg.method == "seqkd":  # SFT on the teacher's answers: packed rows, as without it
        return
    c.data.pack = False  # one example a row, as the cross-tokenizer path needs
    if arg.size == "demo":
        c.data.batch_size = 64  # about the packed 32 rows' examples (2 a row)
        # The teacher's rows (at most 77 of its tokens here) take the 96 bucket, the
        # student's (up to 144) the 160 one: padding only, and half the teacher's forward.
        c.data.length_buckets = (96, 160)
