"""Tiny random Hugging Face models and a tiny BPE tokenizer, built in temp dirs.

Used by the session fixtures in conftest.py (`tiny_tokenizer_dir`,
`tiny_hf_model_dir`). torch/transformers model classes are imported here only:
they are the numerical reference, never a runtime dependency.
"""

from __future__ import annotations

from pathlib import Path

# Special ids shared by the tokenizer and every tiny model config.
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
VOCAB_SIZE = 256
_CORPUS = [
    "the quick brown fox jumps over the lazy dog.",
    "a student learns from a teacher and from a classmate.",
    "knowledge distillation trains a small model to match a large one.",
    "Question: what is 12 plus 7? Answer: 19.",
    "Translate to French: good morning -> bonjour.",
    "Summarize: the cat sat on the mat, then it slept all day.",
    "JAX, Flax and Optax; numbers 0 1 2 3 4 5 6 7 8 9 !?()[]{}<>:;'\"-+*/=%$#@&_",
]


def build_tokenizer(out_dir: Path) -> Path:
    """Trains a 256-token BPE (Metaspace, so decode restores spaces) and saves it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = sorted(
        set("".join(_CORPUS)) | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    )
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    assert fast.pad_token_id == PAD_ID and fast.bos_token_id == BOS_ID and len(fast) <= VOCAB_SIZE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return out_dir


def hf_config(family: str):
    """A transformers config for a 2-layer, width-32 model of `family`.

    'llama-biased' switches on all of Llama's optional biases;
    'llama-rope-scaled' is Llama with Llama 3 rope scaling whose original context
    (16) is short enough that every frequency band is exercised.
    'qwen3', 'gemma2', 'gemma3', 'mistral' have 3 layers (an odd count: no
    repeat of a layer pattern) and a sliding window of 4 tokens, shorter than
    the test sequences, on layers 0 and 2 (Qwen3's on 1 and 2, Mistral's on
    all, SmolLM3's on its no-RoPE layer 1); see `new_family_config`.
    """
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    if family.removesuffix("-small") in NEW_FAMILIES:
        return new_family_config(family)

    ids = dict(pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    if family == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB_SIZE,
            n_positions=128,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_inner=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
    shape = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **ids,
    )
    if family == "qwen2":
        return Qwen2Config(**shape, tie_word_embeddings=True, rope_theta=1000000.0)
    if family == "llama":
        return LlamaConfig(**shape, tie_word_embeddings=False, rms_norm_eps=1e-5)
    if family == "llama-biased":  # attention_bias on q/k/v/o and mlp_bias, untied
        return LlamaConfig(**shape, attention_bias=True, mlp_bias=True)
    if family == "llama-rope-scaled":
        rope = dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        )
        return LlamaConfig(**shape, rope_theta=10000.0, rope_scaling=rope)
    raise ValueError(f"unknown tiny family {family!r}")


NEW_FAMILIES = ("qwen3", "gemma2", "gemma3", "mistral", "smollm3")
WINDOW = 4


def new_family_config(family: str):
    """The tiny Qwen3 / Gemma 2 / Gemma 3 configs, each with every feature on.

    Gemma: query_pre_attn_scalar 12 (not head_dim 8), final soft-cap 5 (both
    Gemmas) and attention soft-cap 2 (Gemma 2; Gemma 3 ignores it in HF), both
    layer types; Gemma 3 with per-layer-type RoPE (local θ 1e4, global 1e6 with
    linear scaling x2). Qwen3 with q/k norms, tied, and its optional window.
    'FAMILY-small' is the same at width 16 with 2 heads (a student for `FAMILY`).
    """
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        MistralConfig,
        Qwen3Config,
        SmolLM3Config,
    )

    family, small = family.removesuffix("-small"), family.endswith("-small")
    ids = dict(pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    shape = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=16 if small else 32,
        intermediate_size=32 if small else 64,
        num_hidden_layers=3,
        num_attention_heads=2 if small else 4,
        num_key_value_heads=1 if small else 2,
        head_dim=8,
        max_position_embeddings=128,
        sliding_window=WINDOW,
        **ids,
    )
    if family == "smollm3":  # layer 1 without RoPE, and (so) windowed
        shape.pop("head_dim")  # SmolLM3's is hidden_size / heads
        return SmolLM3Config(**shape, no_rope_layers=[1, 0, 1], use_sliding_window=True)
    if family == "mistral":  # the window on every layer, untied
        return MistralConfig(**shape, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    if family == "qwen3":
        return Qwen3Config(
            **shape,
            tie_word_embeddings=True,
            use_sliding_window=True,
            max_window_layers=1,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
    gemma = dict(
        shape,
        query_pre_attn_scalar=12,
        final_logit_softcapping=5.0,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    )
    if family == "gemma2":
        return Gemma2Config(**gemma, attn_logit_softcapping=2.0)
    rope = {
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    }
    return Gemma3TextConfig(**gemma, rope_parameters=rope)


def build_multimodal_gemma3(text_model, out_dir: Path, tokenizer_dir: Path | None = None):
    """Saves a multimodal `gemma3` checkpoint (a tiny SigLIP tower and projector)
    whose language model has `text_model`'s weights (a tiny Gemma3ForCausalLM)."""
    import torch
    from transformers import (
        AutoTokenizer,
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        SiglipVisionConfig,
    )

    vision = SiglipVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    text = text_model.config.to_dict()
    config = Gemma3Config(
        text_config=text,
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_index=VOCAB_SIZE - 1,
        boi_token_index=VOCAB_SIZE - 3,
        eoi_token_index=VOCAB_SIZE - 2,
    )
    torch.manual_seed(1)
    model = Gemma3ForConditionalGeneration(config).eval()
    model.model.language_model.load_state_dict(text_model.model.state_dict())
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    if tokenizer_dir is not None:
        AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(out_dir))
    return model


def build_model(family: str, out_dir: Path, tokenizer_dir: Path | None = None, seed: int = 0):
    """Saves a random tiny model (and the tokenizer) to `out_dir`; returns the torch model.

    Weights are perturbed beyond HF's N(0, 0.02) init (norm scales and biases too)
    so logits are far from uniform and parity tests can fail.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(family), dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    if tokenizer_dir is not None:
        AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(out_dir))
    return model
