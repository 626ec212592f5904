"""Hugging Face checkpoints in and out: config.json + safetensors (single or sharded).

Weights are read with safetensors' numpy API and written back in the layout
`transformers.AutoModelForCausalLM.from_pretrained` loads; no torch import here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from classkd_jax.models import hf_weights
from classkd_jax.models.config import ModelConfig
from classkd_jax.models.transformer import stack_layers

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def _resolve(path_or_name: str | os.PathLike) -> Path:
    """A local directory as is; otherwise download the hub repo's config and weights."""
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model dir")
        return path
    name = str(path_or_name)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, gated repo: all the same to the user
        raise FileNotFoundError(
            f"{name!r} is neither a local directory nor a downloadable hub repo ({e})"
        ) from e


def resolve_hf_dir(path_or_name: str | os.PathLike) -> Path:
    """The local directory of a Hugging Face model: `path` itself, or the hub
    snapshot of a repo id (config, weights and tokenizer files only)."""
    return _resolve(path_or_name)


def _tensor_files(path: Path) -> dict[str, Path]:
    """Maps each tensor name to its safetensors file (via the index when sharded)."""
    index = path / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors (nor {INDEX_FILE}) in {path}")
    out = {}
    for file in files:
        with safe_open(file, framework="np") as f:
            out.update(dict.fromkeys(f.keys(), file))
    return out


class _Reader:
    """Lazily reads tensors by name, keeping each shard open once."""

    def __init__(self, path: Path):
        self.path, self.files, self._open = path, _tensor_files(path), {}
        self.used: set[str] = set()

    def get(self, name: str) -> np.ndarray:
        if name not in self.files:
            raise KeyError(f"tensor {name!r} is missing from the checkpoint in {self.path}")
        file = self.files[name]
        if file not in self._open:
            self._open[file] = safe_open(file, framework="np")
        self.used.add(name)
        return self._open[file].get_tensor(name)


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _prefix(config: ModelConfig, names) -> str:
    """The decoder's tensor-name prefix in this checkpoint."""
    if config.family == "gpt2":
        # GPT2LMHeadModel saves 'transformer.wte.weight'; the original hub files lack the prefix.
        return "transformer." if "transformer.wte.weight" in names else ""
    for prefix in hf_weights.DECODER_PREFIXES:
        if prefix + "embed_tokens.weight" in names:
            return prefix
    return "model."  # the missing tensor is then named by the reader


def _check_unused(reader: _Reader, config: ModelConfig, multimodal: bool) -> None:
    unused = set(reader.files) - reader.used
    if config.tie_word_embeddings:
        # Some tied checkpoints store the copy anyway (the hub's Gemma 3 under
        # its language model).
        unused -= {"lm_head.weight", "language_model.lm_head.weight"}
    unused = {n for n in unused if not n.endswith(hf_weights.IGNORED_SUFFIXES)}
    if multimodal:  # the text model of an image-text checkpoint: vision parts skipped
        unused = {n for n in unused if not any(v in n for v in hf_weights.VISION_PARTS)}
    if unused:
        raise ValueError(
            f"checkpoint {reader.path} has tensors the {config.family} model does not use: "
            f"{sorted(unused)[:8]}{' ...' if len(unused) > 8 else ''}"
        )


def load_hf(
    path_or_hub_name: str | os.PathLike,
    *,
    dtype: str | None = None,
    param_dtype: str | None = None,
    shardings: Any = None,
) -> tuple[ModelConfig, dict]:
    """Loads a Hugging Face causal LM directory (or hub name) into our params.

    A multimodal Gemma 3 checkpoint (`model_type` 'gemma3', 4B and larger)
    gives its text model: `text_config`, the language model's tensors, the
    vision tower and projector skipped.

    Args:
      path_or_hub_name: a directory with config.json and *.safetensors (single
        file or sharded with model.safetensors.index.json), or a hub repo id.
      dtype: compute dtype of the returned config (default 'float32').
      param_dtype: dtype the params are cast to (default 'float32').
      shardings: optional pytree of `jax.sharding.Sharding` matching the params;
        each leaf is placed directly with it (no full copy on one device).

    Returns:
      (config, params) with params a plain pytree of jax arrays.

    Raises:
      ValueError: unsupported architecture (names model_type) or unexpected tensors.
      KeyError: a tensor the model needs is missing (names it).
    """
    path = _resolve(path_or_hub_name)
    hf_config = json.loads((path / "config.json").read_text())
    config = ModelConfig.from_hf_config(
        hf_config, dtype=dtype or "float32", param_dtype=param_dtype or "float32"
    )
    reader = _Reader(path)
    specs = hf_weights.specs_for(config, _prefix(config, reader.files))
    np_dtype = np.dtype(config.params_dtype)
    params: dict = {}
    for spec in specs:
        if "{i}" in spec.hf_names[0]:
            # Cast layer by layer: one full-precision copy of a layer at a time.
            layers = [
                spec.to_ours([reader.get(n.format(i=i)) for n in spec.hf_names]).astype(np_dtype)
                for i in range(config.num_layers)
            ]
            value = np.stack(layers)
        else:
            value = spec.to_ours([reader.get(n) for n in spec.hf_names]).astype(np_dtype)
        _set(params, spec.path, value)
    _check_unused(reader, config, hf_config.get("model_type") == "gemma3")
    if shardings is None:
        return config, jax.tree.map(jnp.asarray, params)
    # Each device (on every host) takes only its slice of the host array.
    place = lambda x, sh: jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])
    return config, jax.tree.map(place, params, shardings)


def _hf_tensors(config: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """Our params (scanned or unrolled) -> {HF tensor name: contiguous numpy array}."""
    params = jax.tree.map(np.asarray, jax.device_get(stack_layers(params, config)))
    out: dict[str, np.ndarray] = {}
    for spec in hf_weights.specs_for(config):
        if spec.to_hf is None:
            continue
        leaf = params
        for key in spec.path:
            if key not in leaf:
                raise KeyError(f"params lack {'/'.join(spec.path)} needed for {spec.hf_names[0]}")
            leaf = leaf[key]
        if "{i}" in spec.hf_names[0]:
            for i in range(config.num_layers):
                for name, arr in zip(spec.hf_names, spec.to_hf(leaf[i]), strict=True):
                    out[name.format(i=i)] = arr
        else:
            for name, arr in zip(spec.hf_names, spec.to_hf(leaf), strict=True):
                out[name] = arr
    if config.family == "gpt2":
        for i in range(config.num_layers):
            layer = jax.tree.map(lambda x, i=i: x[i], params["layers"])
            out.update(hf_weights.gpt2_save_tensors(config, layer, i))
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", size.upper())
    if not m:
        raise ValueError(f"max_shard_size={size!r}: expected an int or e.g. '5GB', '200MB'")
    return int(float(m[1]) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[m[2]])


def _write_shards(path: Path, tensors: dict[str, np.ndarray], max_bytes: int) -> None:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in tensors.items():
        if shards[-1] and size + arr.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    metadata = {"format": "pt"}  # transformers refuses safetensors without it
    if len(shards) == 1:
        save_file(shards[0], path / SINGLE_FILE, metadata=metadata)
        return
    weight_map = {}
    for k, shard in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / file, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(a.nbytes for a in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))


def save_hf(
    path: str | os.PathLike,
    config: ModelConfig,
    params: dict,
    tokenizer: Any = None,
    *,
    max_shard_size: int | str = "5GB",
) -> Path:
    """Writes `params` as a Hugging Face directory that `from_pretrained` loads.

    Args:
      path: output directory (created).
      config: the model config; its `param_dtype` is the stored dtype.
      params: our params pytree (jax or numpy arrays).
      tokenizer: optional tokenizer (anything with `save_pretrained`) saved alongside.
      max_shard_size: bytes or e.g. '5GB'; larger checkpoints are sharded with
        model.safetensors.index.json, as transformers does.

    Returns:
      The directory path.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for old in [*path.glob("*.safetensors"), path / INDEX_FILE]:
        old.unlink(missing_ok=True)  # never mix a stale shard with the new ones
    tensors = _hf_tensors(config, params)
    np_dtype = np.dtype(config.params_dtype)
    tensors = {k: v.astype(np_dtype) for k, v in tensors.items()}
    _write_shards(path, tensors, _parse_size(max_shard_size))
    (path / "config.json").write_text(json.dumps(config.to_hf_config(), indent=2))
    generation = {
        k: v
        for k, v in config.to_hf_config().items()
        if k in ("bos_token_id", "eos_token_id", "pad_token_id") and v is not None
    }
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def load_tokenizer(path_or_hub_name: str | os.PathLike, local_files_only: bool = False):
    """`transformers.AutoTokenizer.from_pretrained` on the same directory or hub name
    (`local_files_only`: a hub name from the Hugging Face cache only, else `OSError`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path_or_hub_name), local_files_only=local_files_only)
