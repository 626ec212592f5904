"""Instruction-data settings (big_vision style); training configs embed them.

    config.data = data_config.get_config("source=synthetic")
    train_it = classkd_jax.data.pipeline.make_iterator(config.data, tokenizer, "train")

Variants (`source=`):
- synthetic: the built-in task (seed 0; 20000 / 500 / 1000 examples; a
  share `synthetic.noise` = 0.2 of the train references wrong), its shipped
  tokenizer (`classkd_jax.data.synthetic_tokenizer_path()`), the 'compact'
  template, short buckets, packed rows. With the shipped tokenizer (seed 0)
  prompts are <= 119 tokens, prompt+response <= 143, mean 75: about two
  examples per packed row of 160.
- dolly: the published comparison's training data, MiniLLM's
  `<data_dir>/dolly/raw.jsonl` (first 1000 lines = dev), Alpaca template,
  prompts <= 256 tokens (longer ones dropped), sequences <= 512.
- jsonl / hf / tfds: your own data at `--config.data.path=...` (dev from
  `dev_path`, or the first `dev_num` examples); map columns with
  `--config.data.columns.instruction=question` etc.

Any variant takes a plain-text pre-training corpus for MiniLLM's / DistiLLM's
LM term with `--config.data.lm_path=corpus.txt` (or .jsonl, a directory of
them, or an HF dataset); `pipeline.make_lm_iterator` reads it.
"""

import ml_collections

from classkd_jax.config_utils import parse_arg
from classkd_jax.data import synthetic

SOURCES = ("synthetic", "dolly", "jsonl", "hf", "tfds")


def get_config(arg=None):
    """Returns the locked data config; `arg`: 'source=synthetic' (default) or another source."""
    arg = parse_arg(arg, source="synthetic")
    if arg.source not in SOURCES:
        raise ValueError(f"configs/data.py: source={arg.source!r}; expected one of {SOURCES}")
    c = ml_collections.ConfigDict()
    c.source = "benchmark" if arg.source == "dolly" else arg.source
    c.name = "dolly"  # benchmark set read by source='benchmark'
    c.data_dir = "data"  # root of the MiniLLM layout (benchmark source)
    c.path = ""  # jsonl file, HF dataset dir/name, or prepared TFDS dir
    c.dev_path = ""
    c.dev_num = 1000  # without dev_path: first dev_num examples are dev (MiniLLM)
    c.train_split = "train"  # hf / tfds split names
    c.dev_split = "validation"
    c.tfds_data_dir = ""
    c.columns = ml_collections.ConfigDict(
        {"instruction": "", "input": "", "response": "", "category": ""}
    )  # '' = auto (Dolly or MiniLLM schema)
    c.synthetic = ml_collections.ConfigDict(
        {"seed": 0, "num_train": 20000, "num_dev": 500, "num_test": 1000, "noise": 0.2}
    )
    c.template = "alpaca"
    c.max_prompt_length = 256
    c.max_length = 512
    c.add_bos = False
    c.long_prompts = "drop"  # the protocol drops prompts over the limit
    c.length_buckets = (128, 256, 512)
    c.prompt_buckets = (64, 128, 256)
    c.pack = False
    c.batch_size = 8  # global, in examples (rows when packed)
    c.eval_batch_size = 16
    c.seed = 0  # shuffling
    # Plain text for the pre-training LM loss (MiniLLM, DistiLLM); '' = no LM stream.
    c.lm_path = ""  # .txt (a document per line), .jsonl, a dir of them, or an HF dataset
    c.lm_source = "auto"  # 'text' | 'hf' | 'auto' (text for .txt/.jsonl files and dirs)
    c.lm_column = "text"  # JSONL field / HF column holding the text
    c.lm_split = "train"  # hf split
    c.lm_batch_size = 0  # global packed rows per step; 0 = batch_size
    c.lm_max_length = 0  # packed row length (and longest document chunk); 0 = max_length
    c.lm_max_documents = 0  # read only the first N documents of a huge corpus; 0 = all
    c.lm_seed = 0  # shuffling of the LM stream
    if arg.source == "synthetic":
        c.template = synthetic.DEFAULT_TEMPLATE
        c.max_prompt_length = 128
        c.max_length = 160
        c.length_buckets = (64, 96, 160)
        c.prompt_buckets = (64, 128)
        c.pack = True
        c.batch_size = 32
        c.eval_batch_size = 64
    c.lock()
    return c
