"""Padding, length buckets, packing and masks: token lists -> numpy batches.

Two batch kinds (all arrays numpy, host-local, leading dim B):

Prompt-only (on-policy sampling, evaluation), LEFT-padded so every prompt
ends at the last column and generation appends at the same slot:
  tokens    [B, P] int32  pad_id on the left
  mask      [B, P] int32  1 on prompt tokens (a valid `segment_ids`)
  positions [B, P] int32  max(cumsum(mask) - 1, 0), as HF generate
  index     [B]    int32  index into the TokenizedData; -1 for filler rows
  valid     [B]    int32  0 for filler rows that complete a last batch

Prompt+response (SFT and off-policy losses), RIGHT-padded, optionally with
several examples packed per row:
  tokens      [B, T] int32    prompt, response, EOS, [next example...], pad
  segment_ids [B, T] int32    k >= 1 for the k-th example of the row, 0 = pad
  positions   [B, T] int32    0, 1, ... restarting at each example
  targets     [B, T] int32    tokens[t + 1] within the same example, else pad
  loss_mask   [B, T] float32  1 where targets[t] is a response token
  index       [B]    int32    example index (unpacked rows only; -1 filler)

Alignment: the logits at position t predict tokens[t + 1], so `loss_mask[t]`
is 1 exactly when t + 1 is a response token (EOS included) of the same
example. An example with prompt length P and R response tokens, starting at
column s, has loss_mask = 1 on columns s+P-1 .. s+P+R-2: exactly R scored
positions (a one-token response gives one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pick_bucket(length: int, buckets: Sequence[int], what: str = "length") -> int:
    """The smallest bucket >= `length`.

    Raises:
      ValueError: naming the length and the buckets when none fits.
    """
    for b in sorted(buckets):
        if length <= b:
            return int(b)
    raise ValueError(f"{what} {length} exceeds the largest bucket; buckets: {sorted(buckets)}")


def left_pad_prompts(
    prompts: Sequence[np.ndarray],
    length: int,
    pad_id: int,
    *,
    index: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Builds a left-padded prompt-only batch (layout in the module docstring).

    Args:
      prompts: token ids, each `[P_i]` with P_i <= length.
      length: P, the padded prompt length.
      pad_id: the padding id.
      index: dataset index of each prompt (default 0..n-1).
      batch_size: B >= len(prompts); the extra rows are filler (valid = 0,
        a single pad token marked valid in `mask` so no row is fully masked).
    """
    n = len(prompts)
    b = n if batch_size is None else batch_size
    if b < n:
        raise ValueError(f"batch_size {b} < number of prompts {n}")
    tokens = np.full((b, length), pad_id, np.int32)
    mask = np.zeros((b, length), np.int32)
    for i, p in enumerate(prompts):
        if len(p) > length:
            raise ValueError(f"prompt {i} has {len(p)} tokens > padded length {length}")
        if len(p):
            tokens[i, length - len(p) :] = p
            mask[i, length - len(p) :] = 1
    # Filler rows attend to one pad token so softmax never sees an empty row.
    mask[n:, -1] = 1
    idx = np.full((b,), -1, np.int32)
    idx[:n] = np.arange(n) if index is None else np.asarray(index)
    valid = (np.arange(b) < n).astype(np.int32)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return {"tokens": tokens, "mask": mask, "positions": positions, "index": idx, "valid": valid}


def pack_rows(
    rows: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]],
    length: int,
    pad_id: int,
) -> dict[str, np.ndarray]:
    """Builds a right-padded prompt+response batch from rows of examples.

    Args:
      rows: for each row, the (prompt_ids, response_ids) of the examples
        packed into it, in order (one example per row when not packing; an
        empty row is all padding).
      length: T, the padded row length.
      pad_id: the padding id.

    Returns:
      tokens, segment_ids, positions, targets, loss_mask (module docstring).
    """
    b = len(rows)
    tokens = np.full((b, length), pad_id, np.int32)
    segment_ids = np.zeros((b, length), np.int32)
    positions = np.zeros((b, length), np.int32)
    is_response = np.zeros((b, length), bool)
    for i, row in enumerate(rows):
        col = 0
        for k, (prompt, response) in enumerate(row, start=1):
            n_p, n = len(prompt), len(prompt) + len(response)
            if col + n > length:
                raise ValueError(f"row {i}: examples need {col + n} tokens > row length {length}")
            tokens[i, col : col + n_p] = prompt
            tokens[i, col + n_p : col + n] = response
            segment_ids[i, col : col + n] = k
            positions[i, col : col + n] = np.arange(n)
            is_response[i, col + n_p : col + n] = True
            col += n
    # Column t scores token t+1 when both belong to the same example.
    same = np.zeros((b, length), bool)
    same[:, :-1] = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0)
    loss_mask = np.zeros((b, length), np.float32)
    loss_mask[:, :-1] = (same[:, :-1] & is_response[:, 1:]).astype(np.float32)
    targets = np.full((b, length), pad_id, np.int32)
    targets[:, :-1] = np.where(same[:, :-1], tokens[:, 1:], pad_id)
    return {
        "tokens": tokens,
        "segment_ids": segment_ids,
        "positions": positions,
        "targets": targets,
        "loss_mask": loss_mask,
    }


def plan_packing(lengths: np.ndarray, order: np.ndarray, row_length: int, lookahead: int = 8):
    """Groups examples into rows of at most `row_length` tokens.

    First fit over the last `lookahead` open rows, visiting examples in
    `order`: deterministic, O(N * lookahead), and close to first-fit's fill.

    Args:
      lengths: `[N]` total tokens of each example.
      order: the visiting order (an epoch's permutation).
      row_length: the row capacity T.
      lookahead: how many recent rows stay open.

    Returns:
      A list of rows, each a list of example indices.
    """
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = int(lengths[i])
        if n > row_length:
            raise ValueError(f"example {i} has {n} tokens > row length {row_length}")
        start = max(0, len(rows) - lookahead)
        for r in range(start, len(rows)):
            if free[r] >= n:
                rows[r].append(int(i))
                free[r] -= n
                break
        else:
            rows.append([int(i)])
            free.append(row_length - n)
    return rows
