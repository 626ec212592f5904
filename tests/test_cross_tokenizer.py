"""Cross-tokenizer distillation: host alignment, chunk arrays, losses, and a CLI run.

Tiny tokenizers built with `tokenizers` (module scope, no files): a byte-level
BPE (GPT-2 style, splits multi-byte characters), a SentencePiece-style BPE
with byte fallback (Metaspace, '<0xNN>' pieces), a WordPiece (offsets leave
the spaces out) and a byte-level tokenizer without merges (one token per byte).
"""

from __future__ import annotations

import numpy as np
import pytest

from classkd_jax.data import alignment, cross_rows, vocab_map

CORPUS = [
    "the quick brown fox jumps over the lazy dog.",
    "a student learns from a teacher, héllo wörld 日本語 😀 naïve café",
    "knowledge distillation trains a small model to match a large one.",
]
TEXTS = [
    "the héllo 😀 dog",
    "日本語 and café: naïve students learn",
    "  two  spaces, then 😀😀 emoji",
    "plain ascii sentence.",
    "é",
]


def _fast(tok, **kw):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


def byte_bpe(vocab_size=300, merges=True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size if merges else 257,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    return _fast(tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def sentencepiece_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=340, special_tokens=specials, limit_alphabet=40, show_progress=False
    )
    ascii_corpus = [c.encode("ascii", "ignore").decode() for c in CORPUS]
    tok.train_from_iterator(ascii_corpus * 20, trainer)
    return _fast(tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def wordpiece():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=150, special_tokens=["[UNK]", "[EOS]"], show_progress=False
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    return _fast(tok, eos_token="[EOS]", unk_token="[UNK]")


@pytest.fixture(scope="module")
def toks():
    return {
        "byte_bpe": byte_bpe(),
        "sentencepiece": sentencepiece_bpe(),
        "wordpiece": wordpiece(),
        "bytes": byte_bpe(merges=False),
    }


@pytest.fixture(scope="module")
def spell(toks):
    return {k: vocab_map.token_bytes(t) for k, t in toks.items()}


def _encode(toks, spell, name, text, refine=True):
    return alignment.encode_with_spans(toks[name], text, spell[name] if refine else None)


PAIRS = [
    ("byte_bpe", "sentencepiece"),
    ("byte_bpe", "wordpiece"),
    ("sentencepiece", "wordpiece"),
    ("byte_bpe", "bytes"),
    ("sentencepiece", "bytes"),
]


def _check_partition(spans, chunks, align, covered_to):
    """Chunks run in order, each side's tokens of chunk k lie inside its byte range,
    and every token ending within the shared coverage is in a chunk."""
    real = spans[:, 1] > spans[:, 0]
    ids = chunks[real & (chunks >= 0)]
    assert np.all(np.diff(ids) >= 0), "chunk ids must follow the text order"
    for k in range(align.num_chunks):
        lo, hi = align.cuts[k], align.cuts[k + 1]
        mine = spans[(chunks == k) & real]
        assert len(mine), f"chunk {k} has no token"
        assert mine[:, 0].min() >= lo and mine[:, 1].max() <= hi
        others = spans[(chunks != k) & real]
        overlap = (others[:, 0] < hi) & (others[:, 1] > lo)
        assert not overlap.any(), f"a token of another chunk overlaps chunk {k}"
    assert np.all(chunks[real & (spans[:, 1] <= covered_to)] >= 0)


@pytest.mark.parametrize("refine", [True, False], ids=["exact-bytes", "char-offsets"])
@pytest.mark.parametrize("pair", PAIRS, ids="-".join)
def test_chunks_partition_both_sides_with_equal_byte_ranges(toks, spell, pair, refine):
    for text in TEXTS:
        _, sa = _encode(toks, spell, pair[0], text, refine)
        _, sb = _encode(toks, spell, pair[1], text, refine)
        align = alignment.align_spans(sa, sb, len(text.encode()))
        assert align.num_chunks >= 1
        assert (
            set(align.a[align.a >= 0]) == set(align.b[align.b >= 0]) == set(range(align.num_chunks))
        )
        _check_partition(sa, align.a, align, align.cuts[-1])
        _check_partition(sb, align.b, align, align.cuts[-1])


@pytest.mark.parametrize("other", ["wordpiece", "bytes", "sentencepiece"])
def test_byte_level_chunks_spell_their_bytes_exactly(toks, spell, other):
    """Byte-level BPE covers every byte: its chunk k's token bytes are exactly the
    text's bytes cuts[k]..cuts[k+1], also where tokens end inside a character."""
    for text in TEXTS:
        ids, sa = _encode(toks, spell, "byte_bpe", text)
        _, sb = _encode(toks, spell, other, text)
        raw = text.encode()
        align = alignment.align_spans(sa, sb, len(raw))
        for k in range(align.num_chunks):
            mine = [i for i, c in zip(ids, align.a, strict=True) if c == k]
            got = b"".join(spell["byte_bpe"][i] for i in mine)
            assert got == raw[align.cuts[k] : align.cuts[k + 1]]


def test_cuts_inside_a_multibyte_character_only_at_known_bytes(toks, spell):
    """Character offsets alone never cut inside a character; with the tokens'
    spellings, two byte-level sides that split a character alike share those cuts."""
    text = "😀é日"
    char_starts = set(np.cumsum([0] + [len(c.encode()) for c in text]).tolist())
    _, sa = _encode(toks, spell, "byte_bpe", text, refine=False)
    _, sb = _encode(toks, spell, "bytes", text, refine=False)
    assert len(sb) == len(text.encode())  # one token per byte on that side
    coarse = alignment.align_spans(sa, sb, len(text.encode()))
    assert set(coarse.cuts.tolist()) <= char_starts
    _, sb = _encode(toks, spell, "bytes", text)
    fine = alignment.align_spans(sb, sb, len(text.encode()))
    assert fine.num_chunks == len(text.encode())


@pytest.mark.parametrize("name", ["sentencepiece", "byte_bpe", "wordpiece"])
def test_same_tokenizer_gives_one_token_chunks(toks, spell, name):
    for text in TEXTS:
        _, s = _encode(toks, spell, name, text)
        align = alignment.align_spans(s, s, len(text.encode()))
        np.testing.assert_array_equal(align.a, np.arange(len(s)))
        np.testing.assert_array_equal(align.b, np.arange(len(s)))


def test_bos_on_one_side_joins_the_first_chunk(toks, spell):
    text = "the quick fox"
    _, sa = _encode(toks, spell, "byte_bpe", text)
    _, sb = _encode(toks, spell, "sentencepiece", text)
    with_bos = np.concatenate([[[0, 0]], sb])  # a BOS reports the empty span (0, 0)
    plain = alignment.align_spans(sa, sb, len(text))
    bos = alignment.align_spans(sa, with_bos, len(text))
    assert bos.b[0] == 0 and bos.num_chunks == plain.num_chunks
    np.testing.assert_array_equal(bos.b[1:], plain.b)
    np.testing.assert_array_equal(bos.a, plain.a)


def test_truncated_side_leaves_later_tokens_out(toks, spell):
    text = "the quick brown fox jumps over the lazy dog."
    _, sa = _encode(toks, spell, "byte_bpe", text)
    _, sb = _encode(toks, spell, "wordpiece", text)
    full = alignment.align_spans(sa, sb, len(text))
    cut = alignment.align_spans(sa, sb[:4], len(text))
    assert 0 < cut.num_chunks < full.num_chunks
    covered = sb[3, 1]
    assert np.all(cut.a[sa[:, 1] > covered] == -1)
    assert np.all(cut.b[:4] >= 0)
    np.testing.assert_array_equal(cut.a[cut.a >= 0], full.a[: np.sum(cut.a >= 0)])


def test_row_arrays_static_shapes_and_eos_chunk(toks, spell):
    s_tok, t_tok = toks["byte_bpe"], toks["sentencepiece"]
    text = "héllo 😀 dog"
    s_ids = np.asarray(s_tok(text, add_special_tokens=False)["input_ids"] + [s_tok.eos_token_id])
    t_ids = np.asarray(t_tok(text, add_special_tokens=False)["input_ids"] + [t_tok.eos_token_id])
    eos = (s_tok.eos_token_id, t_tok.eos_token_id)
    spellings = (spell["byte_bpe"], spell["sentencepiece"])
    align = cross_rows.response_alignment(text, s_ids, t_ids, (s_tok, t_tok), eos, spellings)
    assert align.a[-1] == align.b[-1] == align.num_chunks - 1  # EOS pairs with EOS
    assert np.sum(align.a == align.num_chunks - 1) == 1
    arrays = cross_rows.row_arrays(align, 3, 5, 32, 48)
    assert arrays["student_chunk"].shape == (32,) and arrays["teacher_chunk"].shape == (48,)
    assert arrays["chunk_mask"].sum() == align.num_chunks
    assert arrays["first_mask"].sum() == align.num_chunks
    # Column 2 predicts the first response token, on the teacher's side column 4.
    assert arrays["student_chunk"][2] == 0 and arrays["teacher_index"][2] == 4
    assert np.all(arrays["student_chunk"][:2] == -1)
    assert np.all(arrays["student_chunk"][2 + len(s_ids) :] == -1)


def test_the_shipped_pair_aligns_the_tasks_answers_byte_for_byte():
    """The testbed's two tokenizers (byte-level BPE, and SentencePiece-style pieces
    that run across words) on 300 of the task's answers: each chunk's tokens
    spell the same bytes on both sides, and the chunks cover every answer token
    of both, with EOS as the last chunk's end."""
    from classkd_jax.config_utils import import_sibling
    from classkd_jax.data import synthetic, tokenize
    from classkd_jax.models import load_tokenizer

    demo = import_sibling("configs/x.py", "demo")
    student = load_tokenizer(demo.ASSETS.parent / "synthetic_tokenizer")
    teacher = load_tokenizer(demo.TEACHER_TOKENIZERS["sp"])
    spellings = (vocab_map.token_bytes(student), vocab_map.token_bytes(teacher))
    eos = (tokenize.special_ids(student)[0], tokenize.special_ids(teacher)[0])
    task = synthetic.make_synthetic_task(0, num_train=300, num_dev=0, num_test=0)
    answers = [e.response for e in task["train"]]
    sizes = []
    for text in answers:
        ids = [np.asarray(t(text, add_special_tokens=False)["input_ids"] + [e])
               for t, e in zip((student, teacher), eos, strict=True)]  # fmt: skip
        align = cross_rows.response_alignment(
            text, ids[0], ids[1], (student, teacher), eos, spellings
        )
        assert (align.a >= 0).all() and (align.b >= 0).all(), text
        for k in range(align.num_chunks):
            spelled = [
                b"".join(spell[i] or b"<eos>" for i in side[chunks == k])
                for side, chunks, spell in zip(ids, (align.a, align.b), spellings, strict=True)
            ]
            assert spelled[0] == spelled[1], (text, k, spelled)
            sizes.append(((align.a == k).sum(), (align.b == k).sum()))
    sizes = np.asarray(sizes)
    one_each = np.mean((sizes == 1).all(axis=1))
    assert 0.3 < one_each < 0.8  # a real many-to-many alignment, not a token-for-token one
    assert sizes[:, 0].max() >= 8  # some answer stretches share no cut for many tokens


def test_shared_vocabulary_matches_spellings(toks):
    s, t = toks["byte_bpe"], toks["sentencepiece"]
    s_ids, t_ids = vocab_map.shared_vocabulary(s, t)
    spell_s, spell_t = vocab_map.token_bytes(s), vocab_map.token_bytes(t)
    assert len(s_ids) > 30
    assert len(set(s_ids.tolist())) == len(s_ids) and len(set(t_ids.tolist())) == len(t_ids)
    for i, j in zip(s_ids, t_ids, strict=True):
        if spell_s[i] is None:
            continue
        assert spell_s[i] == spell_t[j]
    assert (s.eos_token_id, t.eos_token_id) in set(zip(s_ids.tolist(), t_ids.tolist(), strict=True))
    # Every spelling both sides have is in the map ('Ġt' / '▁t' included).
    both = (set(spell_s) & set(spell_t)) - {None}
    assert {spell_s[i] for i in s_ids} - {None} == both and b" t" in both


def test_a_spelling_with_a_byte_piece_too_maps_to_the_id_the_tokenizer_emits():
    """The shipped SentencePiece-style tokenizer spells 'k' twice ('k' and the
    byte-fallback '<0x6B>'); its model only ever sees the first. Every pair of
    the map is the id each tokenizer emits for that spelling."""
    from classkd_jax.config_utils import import_sibling
    from classkd_jax.models import load_tokenizer

    demo = import_sibling("configs/x.py", "demo")
    student = load_tokenizer(demo.ASSETS.parent / "synthetic_tokenizer")
    teacher = load_tokenizer(demo.TEACHER_TOKENIZERS["sp"])
    s_ids, t_ids = vocab_map.shared_vocabulary(student, teacher)
    spelled = vocab_map.token_bytes(teacher)
    assert spelled.count(b"k") == 2
    checked = 0
    for i, j in zip(s_ids.tolist(), t_ids.tolist(), strict=True):
        if spelled[j] is None or not spelled[j].isascii():  # a lone byte of a character
            continue
        for tok, want in ((student, i), (teacher, j)):
            emitted = tok(spelled[j].decode("utf-8"), add_special_tokens=False)["input_ids"]
            if len(emitted) == 1:
                assert emitted == [want], (spelled[j], emitted, want)
                checked += 1
    assert checked > 2 * 200  # both sides of most of the 334 pairs


# ----- losses -----


def test_exact_match_kl_on_one_vocabulary_is_forward_kl():
    import jax
    import jax.numpy as jnp

    from classkd_jax import losses
    from classkd_jax.losses import cross_tokenizer as xt

    kq, kp = jax.random.split(jax.random.key(0))
    q = jax.random.normal(kq, (6, 40)) * 3
    p = jax.random.normal(kp, (6, 40)) * 3
    ids = jnp.arange(40, dtype=jnp.int32)
    got = xt.exact_match_kl_per_token(q, p, ids, ids, temperature=1.5)
    want = losses.forward_kl_per_token(q, p, temperature=1.5)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_projected_kl_carries_each_teacher_token_to_its_students_first_token():
    """P(s) = sum of p(t) over the teacher ids mapped to s (renormalised over the
    mapped ones), KL(P || q) over the student's whole vocabulary; the identity map
    gives forward KL."""
    import jax
    import jax.numpy as jnp

    from classkd_jax import losses
    from classkd_jax.losses import cross_tokenizer as xt

    kq, kp = jax.random.split(jax.random.key(1))
    q = jax.random.normal(kq, (5, 7)) * 2
    p = jax.random.normal(kp, (5, 11)) * 2
    projection = np.array([0, 0, 3, 6, -1, 2, 2, 2, 5, -1, 1], np.int32)
    got = xt.projected_kl_per_token(q, p, jnp.asarray(projection), temperature=2.0)
    pt = np.asarray(jax.nn.softmax(np.asarray(p, np.float64) / 2.0, -1))
    mass = np.zeros((5, 7))
    for t, s in enumerate(projection):
        if s >= 0:
            mass[:, s] += pt[:, t]
    mass /= mass.sum(-1, keepdims=True)
    logq = np.asarray(jax.nn.log_softmax(np.asarray(q, np.float64) / 2.0, -1))
    want = np.sum(np.where(mass > 0, mass * (np.log(np.where(mass > 0, mass, 1)) - logq), 0), -1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    ids = jnp.arange(7, dtype=jnp.int32)
    same = xt.projected_kl_per_token(q, p[:, :7], ids, temperature=1.5)
    np.testing.assert_allclose(same, losses.forward_kl_per_token(q, p[:, :7], temperature=1.5),
                               rtol=1e-6, atol=1e-6)  # fmt: skip


def test_the_first_token_map_on_the_shipped_pairs():
    """Every teacher token goes to a student token spelling a prefix of its bytes;
    where the teacher's token is a whole word the student spells in several tokens,
    to the student's own first one; EOS to EOS."""
    from transformers import AutoTokenizer

    from classkd_jax.data import build_tokenizer, synthetic

    student = AutoTokenizer.from_pretrained(str(synthetic.synthetic_tokenizer_path()))
    s_spell = vocab_map.token_bytes(student)
    for out in (build_tokenizer.SPW_OUT, build_tokenizer.SP_OUT):
        teacher = AutoTokenizer.from_pretrained(str(out))
        t_spell = vocab_map.token_bytes(teacher)
        m = vocab_map.first_token_map(student, teacher)
        assert m.shape == (len(teacher),) and m[teacher.eos_token_id] == student.eos_token_id
        for t, s in enumerate(m):
            if t_spell[t]:
                assert s >= 0 and t_spell[t].startswith(s_spell[s]), (t_spell[t], s)
            elif t != teacher.eos_token_id:
                assert s == -1
    teacher = AutoTokenizer.from_pretrained(str(build_tokenizer.SPW_OUT))
    m = vocab_map.first_token_map(student, teacher)
    for word in ("▁market", "▁lake."):
        own = student(word.replace("▁", " "), add_special_tokens=False).input_ids
        assert m[teacher.convert_tokens_to_ids(word)] == own[0]
    assert len(student(" lake.", add_special_tokens=False).input_ids) > 1


def test_alm_on_one_token_chunks_is_its_token_level_form():
    """Same tokenizer: chunk k is token k, and ALM is the per-token binarised KL
    between p(y_t) and q(y_t), written out here from its definition."""
    import jax
    import jax.numpy as jnp

    from classkd_jax.losses import cross_tokenizer as xt

    b, t = 2, 7
    k1, k2 = jax.random.split(jax.random.key(1))
    logq = jax.nn.log_sigmoid(jax.random.normal(k1, (b, t)) * 2)
    logp = jax.nn.log_sigmoid(jax.random.normal(k2, (b, t)) * 2)
    ids = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)).at[:, -2:].set(-1)
    mask = (jnp.arange(t) < t - 2).astype(jnp.float32)[None].repeat(b, 0)
    loss, grad, sq, sp = jax.jit(xt.alm_chunk_terms)(logq, logp, ids, ids, mask)
    pq, pp = np.exp(np.asarray(logq, np.float64)), np.exp(np.asarray(logp, np.float64))
    want = pp * np.log(pp / pq) + (1 - pp) * np.log((1 - pp) / (1 - pq))
    want = np.where(np.asarray(mask) > 0, want, 0.0)
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sq, np.where(mask > 0, logq, 0), rtol=1e-6)
    # d/dlog q of the binarised KL: q (1 - p) / (1 - q) - p.
    dwant = np.where(np.asarray(mask) > 0, pq * (1 - pp) / (1 - pq) - pp, 0.0)
    np.testing.assert_allclose(grad, dwant, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 100.0])
def test_alm_binarises_the_chunk_probabilities_at_its_temperature(tau):
    """tau: the Bernoulli success probabilities are exp(S / tau); the returned
    gradient is d/dS^q of that binarised KL (chain rule: 1 / tau)."""
    import jax
    import jax.numpy as jnp

    from classkd_jax.losses import cross_tokenizer as xt

    b, t = 2, 6
    k1, k2 = jax.random.split(jax.random.key(5))
    # chunk log-likelihoods of several tokens: -0.1 .. -30 nats
    logq = -jnp.exp(jax.random.uniform(k1, (b, t), minval=-2.3, maxval=3.4))
    logp = -jnp.exp(jax.random.uniform(k2, (b, t), minval=-2.3, maxval=3.4))
    ids = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = jnp.ones((b, t), jnp.float32)
    loss, grad, _, _ = xt.alm_chunk_terms(logq, logp, ids, ids, mask, binarization_temp=tau)
    lq, lp = np.asarray(logq, np.float64) / tau, np.asarray(logp, np.float64) / tau
    pq, pp = np.exp(lq), np.exp(lp)
    want = pp * (lp - lq) + (1 - pp) * (np.log1p(-pp) - np.log1p(-pq))
    np.testing.assert_allclose(loss, want, rtol=2e-4, atol=1e-7)
    dwant = (pq * (1 - pp) / (1 - pq) - pp) / tau
    np.testing.assert_allclose(grad, dwant, rtol=2e-3, atol=1e-7)
    # Its descent direction moves S^q towards S^p: sign(dL/dS^q) = sign(S^q - S^p).
    np.testing.assert_array_equal(np.sign(grad), np.sign(np.asarray(logq) - np.asarray(logp)))


def test_uld_is_sorted_l1_and_ignores_vocabulary_order():
    import jax

    from classkd_jax.losses import cross_tokenizer as xt

    q = jax.random.normal(jax.random.key(2), (3, 12))
    p = jax.random.normal(jax.random.key(3), (3, 20))
    got = xt.uld_per_token(q, p)
    sq = -np.sort(-np.asarray(jax.nn.softmax(q)), -1)
    sp = -np.sort(-np.asarray(jax.nn.softmax(p)), -1)
    want = np.abs(np.pad(sq, ((0, 0), (0, 8))) - sp).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    perm = jax.random.permutation(jax.random.key(4), 20)
    np.testing.assert_allclose(xt.uld_per_token(q, p[:, perm]), got, rtol=1e-6, atol=1e-7)


def test_teacher_chunk_loglik_by_characters_is_the_chain_rule(toks, spell):
    """A teacher that splits every student token into bytes: its chunk
    log-likelihoods (one forward, `chunk_sums`) equal the product rule computed
    by scoring each byte after its own prefix in separate forwards."""
    import jax
    import jax.numpy as jnp

    from classkd_jax.losses import cross_tokenizer as xt
    from classkd_jax.models import Transformer, get_preset, init_params

    t_tok = toks["bytes"]
    text = "the quick fox"
    s_ids, s_spans = _encode(toks, spell, "byte_bpe", text)
    t_ids, t_spans = _encode(toks, spell, "bytes", text)
    align = alignment.align_spans(s_spans, t_spans, len(text))
    assert align.num_chunks == len(s_ids) and len(t_ids) == len(text)
    cfg = get_preset("tiny-llama", vocab_size=len(t_tok), dtype="float32")
    params = init_params(cfg, jax.random.key(0))
    model = Transformer(cfg)
    bos = [t_tok.eos_token_id]  # a one-token prompt: the first byte is predicted too
    tokens = np.asarray(bos + t_ids, np.int32)
    n = len(tokens)

    @jax.jit
    def logits_of(row):
        return model.apply({"params": params}, row[None]).logits[0]

    logp = jax.nn.log_softmax(logits_of(jnp.asarray(tokens)), -1)
    per_pos = np.asarray(logp[np.arange(n - 1), tokens[1:]])  # column t scores token t+1
    chunk_of_col = np.asarray(align.b, np.int32)
    got = xt.chunk_sums(per_pos[None], chunk_of_col[None], align.num_chunks)[0]
    for k in range(align.num_chunks):
        brute = 0.0
        for j in np.flatnonzero(align.b == k):  # byte j of the text, token j + 1 of the row
            prefix = np.zeros(n, np.int32)  # right padding: causal, earlier columns unaffected
            prefix[: j + 1] = tokens[: j + 1]
            brute += float(jax.nn.log_softmax(logits_of(jnp.asarray(prefix))[j])[tokens[j + 1]])
        np.testing.assert_allclose(got[k], brute, rtol=1e-5, atol=1e-5)


def test_alm_surrogate_gradient_is_the_chunk_loss_gradient():
    """The step's ALM part (value + g_k (log q - sg(log q)), token-separable) has the
    gradient of the chunk loss itself, on chunks of several tokens."""
    import jax
    import jax.numpy as jnp

    from classkd_jax import losses
    from classkd_jax.losses import cross_tokenizer as xt
    from classkd_jax.training import cross_objectives

    b, t, v = 2, 9, 11
    logits = jax.random.normal(jax.random.key(5), (b, t, v))
    targets = jax.random.randint(jax.random.key(6), (b, t), 0, v)
    chunk = jnp.asarray([[-1, 0, 0, 1, 2, 2, 2, 3, -1], [-1, -1, 0, 1, 1, 2, -1, -1, -1]])
    teacher_logp = -jax.random.uniform(jax.random.key(7), (b, 6)) * 3
    teacher_chunk = jnp.asarray([[0, 1, 1, 2, 3, -1], [0, 0, 1, 2, 2, -1]])
    chunk_mask = (jnp.arange(t)[None] < jnp.asarray([[4], [3]])).astype(jnp.float32)
    first = (
        jnp.zeros((b, t))
        .at[0, jnp.asarray([1, 3, 4, 7])]
        .set(1)
        .at[1, 2:6:1]
        .set(jnp.asarray([1.0, 1.0, 0.0, 1.0]))
    )
    loss_mask = (chunk >= 0).astype(jnp.float32)
    batch = dict(
        student_chunk=chunk,
        teacher_chunk=teacher_chunk,
        chunk_mask=chunk_mask,
        first_mask=first,
        loss_mask=loss_mask,
    )

    def logq_of(lg):
        return losses.token_log_probs(lg, targets)

    def direct(lg):
        loss, _, _, _ = xt.alm_chunk_terms(
            logq_of(lg), teacher_logp, chunk, teacher_chunk, chunk_mask
        )
        return jnp.sum(loss) / jnp.sum(chunk_mask)

    ex = jax.jit(cross_objectives.alm_extras)(batch, logq_of(logits), teacher_logp)

    def surrogate(lg):
        logq = logq_of(lg)
        per = ex["alm_value"] + ex["alm_grad"] * (logq - jax.lax.stop_gradient(logq))
        return jnp.sum(per * loss_mask) / jnp.sum(loss_mask)

    (v_s, g_s), (v_d, g_d) = jax.jit(
        lambda lg: (jax.value_and_grad(surrogate)(lg), jax.value_and_grad(direct)(lg))
    )(logits)
    np.testing.assert_allclose(v_s, v_d, rtol=1e-6)
    np.testing.assert_allclose(g_s, g_d, atol=1e-7)


# ----- the jitted step (tiny presets, one device) -----


def _kd_config(method="kd", **changes):
    from classkd_jax.config_utils import import_sibling, with_changes

    config = import_sibling("configs/x.py", method).get_config("size=tiny")
    changes = {"steps": 2, "eval_every": 0, "data.pack": False, "student.eps": 1e-6, **changes}
    if method == "classkd":
        changes = {"classmate.eps": 1e-6, **changes}
    return with_changes(config, changes)


class KDStep:
    """Tiny KD (or `method`) on one device; `cross`: the same tokenizer taken as the
    teacher's own (every chunk one token), through the cross-tokenizer path with
    that loss."""

    def __init__(self, cross: str | None, method: str = "kd", **changes):
        import jax

        from classkd_jax.sharding import make_mesh
        from classkd_jax.training import checks, roles
        from classkd_jax.training import data as data_lib
        from classkd_jax.training.cross_objectives import CrossTokenizer
        from classkd_jax.training.run import build_models, initial_state
        from classkd_jax.training.state import params_shardings, run_state_shardings
        from classkd_jax.training.step import StepBuilder

        self.config = config = _kd_config(method, **changes)
        self.mesh = mesh = make_mesh(data=1, devices=jax.devices()[:1])
        tok, where = roles.resolve_tokenizer(config)
        context, why = checks.context_length(config)
        self.sources = roles.plan_roles(config, tok, where, context, why)
        v = len(tok)
        ids = np.arange(v, dtype=np.int32)
        xt = CrossTokenizer(cross, v, ids, ids, projection=ids) if cross else None
        self.models = build_models(config, self.sources, 2, v, xt)
        self.teacher = roles.load_params(self.sources["teacher"], mesh, (0, 1))
        self.data = data_lib.build(
            config,
            tok,
            sampling_batch=8,
            needs_prompts=method != "kd",
            teacher_tokenizer=tok if cross else None,
        )
        self.tok = tok
        self.builder = StepBuilder(config, self.models, mesh)
        opt = lambda r: (r.config, r.optimizer) if r is not None else None  # noqa: E731
        shardings = run_state_shardings(mesh, opt(self.models.student), opt(self.models.classmate))
        frozen = {"teacher": params_shardings(self.models.teacher.config, mesh)}
        self.step = self.builder.jit(shardings, frozen)
        self.initial = lambda: initial_state(config, self.models, self.sources, mesh)

    def batch(self):
        return {"off": self.data.next_off(self.builder.rows)}

    def classkd_batch(self, new: int):
        """'off' rows, 'on' 'samples' that are the prompts' own dataset responses (the
        tokenizer's own segmentation, cut to `new` tokens) and the step's controls."""
        from classkd_jax.data import to_global
        from classkd_jax.training import objectives

        tokens, mask, index = self.data.next_prompts_indexed(self.builder.rows)
        out = np.zeros((len(index), new), np.int32)
        for row, i in enumerate(index):
            ids = self.data.train.responses[i][:new]
            out[row, : len(ids)] = ids
        lengths = [min(len(self.data.train.responses[i]), new) for i in index]
        samples = {
            "prompt_tokens": np.asarray(tokens),
            "prompt_mask": np.asarray(mask),
            "tokens": out,
            "mask": np.arange(new)[None] < np.asarray(lengths)[:, None],
        }
        if self.models.cross is not None:
            on = self.data.add_teacher_to_samples(samples, index, self.builder.rows)
        else:
            on = to_global(samples, self.builder.rows)
        batch = {"off": self.data.next_off(self.builder.rows), "on": on}
        batch["control"] = objectives.control(self.config, 0)
        return batch

    def run(self, batch):
        import jax

        state, metrics = self.step(
            self.initial(), {"teacher": self.teacher}, batch, jax.random.key(0)
        )
        return jax.device_get(state), {k: float(v) for k, v in jax.device_get(metrics).items()}


@pytest.fixture(scope="module")
def plain_kd():
    step = KDStep(None)
    return step, step.run(step.batch())


@pytest.mark.parametrize("loss", ["exact", "projected"])
def test_exact_match_and_projected_on_one_tokenizer_are_word_level_kd(plain_kd, loss):
    """Same tokenizer through the cross-tokenizer path with 'exact' or 'projected'
    (the identity map): the step's loss and update equal today's word-level KD
    (forward KL) on the same rows."""
    import jax

    kd, (kd_state, kd_metrics) = plain_kd
    xt = KDStep(loss)
    batch = xt.batch()
    mask = np.asarray(batch["off"]["loss_mask"])
    assert np.all(np.asarray(batch["off"]["exact_mask"]) == mask)
    assert np.all(np.asarray(batch["off"]["first_mask"]) == mask)
    state, metrics = xt.run(batch)
    np.testing.assert_allclose(metrics["loss"], kd_metrics["loss"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(metrics[f"xt_{loss}"], kd_metrics["kd"], rtol=1e-6, atol=1e-7)
    leaves = zip(jax.tree.leaves(state.student), jax.tree.leaves(kd_state.student), strict=True)
    for a, b in leaves:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)


def test_inner_ce_scores_the_columns_inside_chunks_with_the_dataset_token():
    """`cross_tokenizer.inner_ce`: the pair loss at chunk starts, the CE of the
    dataset token at the other scored columns, each column weight 1 (the step
    then takes the mean over scored columns); without it, the pair loss alone,
    weighted to a mean over pairs. On dataset rows only."""
    import jax
    import jax.numpy as jnp

    from classkd_jax import losses
    from classkd_jax.training import cross_objectives as co

    loss_mask = jnp.asarray([[0, 1, 1, 1, 1, 0]], jnp.float32)
    first = jnp.asarray([[0, 1, 0, 1, 0, 0]], jnp.float32)
    batch = {"loss_mask": loss_mask, "first_mask": first, "exact_mask": first}
    plain = co.pair_weight(batch, "projected")
    np.testing.assert_allclose(plain["xt_weight"], first * 4 / 2)
    w = co.pair_weight(batch, "projected", inner_ce=True)
    np.testing.assert_array_equal(w["xt_weight"], first)
    np.testing.assert_array_equal(w["xt_fill"], [[0, 0, 1, 0, 1, 0]])

    ids = np.arange(9, dtype=np.int32)
    cross = co.CrossTokenizer("projected", 9, ids, ids, projection=ids, inner_ce=True)
    (part,) = co.kd_parts(_kd_config("kd"), cross)
    assert set(part.extras) == {"xt_weight", "xt_fill", "targets"}
    kq, kp = jax.random.split(jax.random.key(3))
    q, p = jax.random.normal(kq, (6, 9)), jax.random.normal(kp, (6, 9))
    targets = jnp.arange(6, dtype=jnp.int32)
    ex = {"xt_weight": w["xt_weight"][0], "xt_fill": w["xt_fill"][0], "targets": targets}
    value, _ = part.token_fn((q, p), ex)
    kl = losses.forward_kl_per_token(q, p)
    ce = losses.cross_entropy_per_token(q, targets)
    np.testing.assert_allclose(value, first[0] * kl + w["xt_fill"][0] * ce, rtol=1e-6)
    # ClassKD: the student's off-policy term and the classmate's (dataset rows) are
    # filled; the on-policy term (the student's own samples) is not.
    config = _kd_config("classkd", **{"misfeedback.weight": 0.0})
    off, on = co.classkd_parts(config, cross, on_policy=True)
    (mate,) = co.classmate_parts(config, cross)
    assert "xt_fill" in off.extras and "xt_fill" in mate.extras and "xt_fill" not in on.extras
    value, _ = off.token_fn((q, p), ex)
    w_off = float(config.classkd.off_policy_weight)
    np.testing.assert_allclose(value, w_off * (first[0] * kl + w["xt_fill"][0] * ce), rtol=1e-6)


def test_alm_step_on_one_tokenizer_is_the_token_level_binarised_kl():
    """Same tokenizer, 'alm': the step's loss is the mean over response tokens of
    KL(Bern(p(y_t)) || Bern(q(y_t))), computed here from the dense logits; a second
    batch of the same bucket reuses the compiled program."""
    import functools

    import jax
    import jax.numpy as jnp

    from classkd_jax.training.step import head, hidden_states

    xt = KDStep("alm")
    batch = xt.batch()
    off = batch["off"]
    state = xt.initial()

    @functools.partial(jax.jit, static_argnums=0)
    def token_logp(cfg, params, rows):
        w, vocab_major = head(cfg, params)
        h = hidden_states(cfg, params, rows)
        logits = h @ (w.T if vocab_major else w)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        return jnp.take_along_axis(logp, rows["targets"][..., None], -1)[..., 0]

    rows = {k: off[k] for k in ("tokens", "positions", "segment_ids", "targets")}
    logq = np.asarray(token_logp(xt.models.student.config, state.student.params, rows))
    logp = np.asarray(token_logp(xt.models.teacher.config, xt.teacher, rows))
    mask = np.asarray(off["loss_mask"]) > 0
    q, p = np.exp(logq.astype(np.float64)), np.exp(logp.astype(np.float64))
    kl = p * (logp - logq) + (1 - p) * (np.log1p(-p) - np.log1p(-q))
    _, metrics = xt.run(batch)
    np.testing.assert_allclose(metrics["xt_alm"], kl[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], kl[mask].mean(), rtol=1e-5)
    second = xt.batch()
    assert second["off"]["teacher_tokens"].shape == off["teacher_tokens"].shape
    xt.run(second)
    assert xt.builder and xt.step.jitted(second)._cache_size() == 1


# ----- the CLI: a Qwen3-like teacher with a byte-level BPE, a Llama student with another -----


def _hf_model(family: str, tokenizer, out):
    """A random tiny HF model of `family` sized to `tokenizer`, saved with it."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.tiny_hf import hf_config

    cfg = hf_config(family)
    ids = tokenizer.eos_token_id
    cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = (
        len(tokenizer),
        ids,
        ids,
        ids,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def test_cli_trains_a_llama_student_from_a_qwen3_teacher_with_another_tokenizer(
    tmp_path, tiny_hf_model_dir
):
    import json

    from classkd_jax import train
    from classkd_jax.cli import UserError

    teacher_tok = byte_bpe()
    teacher = _hf_model("qwen3", teacher_tok, tmp_path / "teacher")
    student = tiny_hf_model_dir("llama")  # the tiny Metaspace BPE (SentencePiece-like)
    argv = [
        "--config",
        "configs/kd.py:size=tiny",
        "--workdir",
        str(tmp_path / "run"),
        f"--config.teacher.path={teacher}",
        f"--config.teacher.tokenizer={teacher}",
        f"--config.student.path={student}",
        "--config.data.pack=False",
        "--config.eval_every=0",
        "--config.steps=4",
        "--config.log_every=1",
        "--config.checkpoint_every=4",
    ]
    assert train.main(argv) == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["xt_alm"] for m in lines if "xt_alm" in m]
    assert len(losses) == 4 and all(np.isfinite(losses)) and all(x > 0 for x in losses)
    assert len(set(losses)) > 1
    assert (tmp_path / "run" / "student_hf" / "config.json").is_file()
    # Without teacher.tokenizer the same pair is refused in one line naming the fix.
    shared = [a for a in argv if "teacher.tokenizer" not in a]
    with pytest.raises(UserError, match="set teacher.tokenizer to it for cross-tokenizer KD"):
        train.main([*shared[:3], str(tmp_path / "r2"), *shared[4:]])


def test_cross_tokenizer_keys_are_checked():
    from classkd_jax.cli import UserError
    from classkd_jax.config_utils import import_sibling
    from classkd_jax.training import checks

    for method, changes, words in [
        ("minillm", {"teacher.tokenizer": "x"}, "method='kd', 'gkd', 'classkd' or 'seqkd'"),
        ("gkd", {"teacher.tokenizer": "x", "gkd.seq_kd": True}, "gkd.seq_kd"),
        ("classkd", {"teacher.tokenizer": "x", "classkd.estimator": "sequence"}, "estimator"),
        ("kd", {"teacher.tokenizer": "x", "data.pack": True}, "data.pack=False"),
        ("kd", {"teacher.tokenizer": "x", "cross_tokenizer.loss": "gold"}, "cross_tokenizer.loss"),
        (
            "kd",
            {"teacher.tokenizer": "x", "cross_tokenizer.binarization_temp": 0.0},
            "cross_tokenizer.binarization_temp=0.0",
        ),
        ("kd", {"teacher.tokenizer": "x", "cross_tokenizer.inner_ce": True}, "inner_ce=True"),
        (
            "gkd",
            {
                "teacher.tokenizer": "x",
                "cross_tokenizer.inner_ce": True,
                "cross_tokenizer.loss": "projected",
            },
            "method='gkd'",
        ),  # fmt: skip
    ]:
        config = import_sibling("configs/x.py", method).get_config("size=tiny")
        with config.unlocked():
            for key, value in changes.items():
                section, _, leaf = key.rpartition(".")
                config[section][leaf] = value
        with pytest.raises(UserError, match=words.replace("(", r"\(")):
            checks.validate(config)
    x = {"teacher.tokenizer": "x"}
    for method, changes, words in [
        ("kd", {"cross_tokenizer.loss": "uld"}, "without teacher.tokenizer"),
        ("kd", {"teacher.template": "compact"}, "without teacher.tokenizer"),
        ("kd", {"teacher.add_bos": True}, "without teacher.tokenizer"),
        ("kd", {**x, "kd.divergence": "reverse_kl"}, "kd.divergence"),
        (
            "kd",
            {**x, "cross_tokenizer.loss": "uld", "cross_tokenizer.binarization_temp": 100.0},
            "binarization_temp=100.0 has no effect with cross_tokenizer.loss='uld'",
        ),
        ("gkd", {**x, "gkd.beta": 0.9}, "gkd.beta"),
        ("classkd", {**x, "classmate.divergence": "reverse_kl"}, "classmate.divergence"),
        ("seqkd", {**x, "cross_tokenizer.loss": "uld"}, "no effect with method='seqkd'"),
    ]:
        config = _kd_config(method, **changes)
        with pytest.raises(UserError, match=words):
            checks.refuse_unused(config, _kd_config(method))
        checks.refuse_unused(_kd_config(method, **x), _kd_config(method))  # the plain key is fine


# ----- SeqKD: the teacher's answers as text -----


def test_seqkd_answers_become_the_students_tokens_of_their_text(toks, spell):
    """Each answer in the teacher's tokens becomes the student's tokenisation of
    the text it spells, then the student's EOS, on the student's own prompt; an
    answer cut inside a multi-byte character keeps only its whole characters;
    one too long for max_length is cut and counted."""
    from classkd_jax.data.tokenize import TokenizedData, TokenizeStats
    from classkd_jax.training import seqkd

    s_tok, t_tok = toks["byte_bpe"], toks["sentencepiece"]
    s_eos, t_eos = s_tok.eos_token_id, t_tok.eos_token_id
    # (a text that starts with a space spells alike with or without one more there:
    # Metaspace prepends '▁' only to a text that lacks it, so those are left out)
    texts = [*(t for t in TEXTS if not t.startswith(" ")), "the 日本"]
    answers = [t_tok(t, add_special_tokens=False).input_ids + [t_eos] for t in texts]
    *head, last = answers
    assert spell["sentencepiece"][last[-2]] not in (None, "本".encode())  # a byte piece
    last = last[:-2] + [t_eos]  # cut after the first byte of '本'
    n, prompts = len(texts), [np.arange(1, 4 + i, dtype=np.int32) for i in range(len(texts))]

    def data(responses):
        stats = TokenizeStats(examples=n, kept=n)
        return TokenizedData(prompts, [np.asarray(r, np.int32) for r in responses],
                             np.arange(n), 0, stats)  # fmt: skip

    # Its Metaspace prepends '▁': "the" spells " the", a space the text did not have
    assert vocab_map.prepends_space(t_tok, spell["sentencepiece"])
    assert not vocab_map.prepends_space(s_tok, spell["byte_bpe"])
    kw = dict(prepends_space=True, teacher_eos=t_eos, eos_id=s_eos)
    out = seqkd.retokenized(data([*head, last]), data(answers), spell["sentencepiece"], s_tok,
                            max_length=64, **kw)  # fmt: skip
    expected = [*texts[:-1], "the 日"]
    for i, text in enumerate(expected):
        assert out.responses[i].tolist() == s_tok(text).input_ids + [s_eos], text
        np.testing.assert_array_equal(out.prompts[i], prompts[i])
    assert out.stats.response_truncated == 0
    short = seqkd.retokenized(data(answers), data(answers), spell["sentencepiece"], s_tok,
                              max_length=12, **kw)  # fmt: skip
    for i, r in enumerate(short.responses):
        assert len(prompts[i]) + len(r) <= 12 and r[-1] == s_eos
    assert (
        short.stats.response_truncated
        == sum(
            len(s_tok(t).input_ids) + 1 > 12 - len(p) for t, p in zip(texts, prompts, strict=True)
        )
        > 0
    )


@pytest.mark.slow
def test_seqkd_trains_on_the_answers_of_a_teacher_with_another_tokenizer(tmp_path):
    """Through the CLI (tiny presets, a random teacher on the demo's second tokenizer):
    the teacher answers in its own tokens (the cache holds its ids, past the
    student's vocabulary), and the student trains on their text."""
    import json

    from classkd_jax import train

    run = tmp_path / "run"
    argv = ["--config", "configs/demo.py:method=seqkd,teacher_tokenizer=sp,size=tiny",
            "--workdir", str(run), "--config.steps=2", "--config.log_every=1",
            "--config.data.synthetic.num_train=64"]  # fmt: skip
    assert train.main(argv) == 0
    fingerprint = json.loads((run / "seqkd" / "fingerprint.json").read_text())
    assert fingerprint["fingerprint"]["tokenizer"] == 768  # the teacher's
    ids = np.concatenate([np.load(p)["tokens"] for p in sorted((run / "seqkd").glob("part-*"))])
    assert ids.max() >= 512  # not the student's 512-entry vocabulary
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["loss"]) for m in lines if "loss" in m)
    assert (run / "student_hf" / "config.json").is_file()


# ----- on-policy samples re-tokenised for the teacher (GKD) -----


def test_samples_are_retokenised_for_the_teacher_with_byte_exact_chunks(toks, spell):
    """A student 'sample' spelled byte by byte (not its tokenizer's own segmentation),
    after a left-padded prompt: the teacher gets its template's prompt, its own
    tokens of the same text and its EOS; every chunk spells the same bytes on both
    sides; a sample that stops being UTF-8 leaves its tail out of every chunk."""
    from classkd_jax.data import cross_samples, templates
    from classkd_jax.data.sources import Example

    s_tok, t_tok = toks["bytes"], toks["byte_bpe"]
    eos = (s_tok.eos_token_id, t_tok.eos_token_id)
    ex = Example(uid="0", instruction="say hi", input="", responses=("hi",))
    retok = cross_samples.SampleRetokenizer(
        examples=[ex],
        source_index=np.asarray([0]),
        student=s_tok,
        teacher=t_tok,
        spellings=(spell["bytes"], spell["byte_bpe"]),
        template="compact",
        add_bos=False,
        eos=eos,
        pad=0,
        max_prompt_length=64,
        buckets=(64, 128),
    )
    text = "héllo 😀 dog"
    ids = s_tok(text, add_special_tokens=False)["input_ids"] + [eos[0]]
    junk = s_tok("ok", add_special_tokens=False)["input_ids"] + [s_tok.convert_tokens_to_ids("Ģ")]
    width, new = 6, 24
    tokens = np.zeros((2, new), np.int32)
    mask = np.zeros((2, new), bool)
    for row, seq in enumerate((ids, junk + ids[:3])):
        tokens[row, : len(seq)], mask[row, : len(seq)] = seq, True
    samples = {
        "prompt_tokens": np.ones((2, width), np.int32),
        "prompt_mask": np.ones((2, width), bool),
        "tokens": tokens,
        "mask": mask,
    }
    out = retok.add_teacher(samples, np.asarray([0, 0]))
    prompt = t_tok(templates.format_prompt("say hi", "", "compact"), add_special_tokens=False)
    n_p = len(prompt["input_ids"])
    want = prompt["input_ids"] + t_tok(text, add_special_tokens=False)["input_ids"] + [eos[1]]
    np.testing.assert_array_equal(out["teacher_tokens"][0, : len(want)], want)
    assert out["teacher_tokens"].shape == (2, 64)
    s_chunk, t_chunk = out["student_chunk"][0], out["teacher_chunk"][0]
    t_row = out["teacher_tokens"][0]
    for k in range(int(out["chunk_mask"][0].sum())):
        s_cols = np.flatnonzero(s_chunk == k)  # column c predicts token c + 1
        t_cols = np.flatnonzero(t_chunk == k)
        s_bytes = b"".join(spell["bytes"][i] or b"<eos>" for i in tokens[0, s_cols + 1 - width])
        t_bytes = b"".join(spell["byte_bpe"][i] or b"<eos>" for i in t_row[t_cols + 1])
        assert s_bytes == t_bytes
    assert out["first_mask"][0].sum() == out["chunk_mask"][0].sum() > 3
    assert t_chunk[n_p - 1] == 0 and out["teacher_index"][0, width - 1] == n_p - 1
    # Row 1: 'ok' then a lone continuation byte: only 'ok' can be aligned.
    assert out["chunk_mask"][1].sum() >= 1
    assert np.all(out["student_chunk"][1, width - 1 + 2 :] == -1)


def test_a_students_dummy_prefix_space_is_not_sent_to_the_teacher(toks, spell):
    """A SentencePiece student (Metaspace prepends '▁': its sample "▁the dog" spells
    " the dog"): the teacher reads "the dog", as it read the dataset's answers, and
    the chunks still spell the same bytes on both sides."""
    from classkd_jax.data import cross_samples
    from classkd_jax.data.sources import Example

    s_tok, t_tok = toks["sentencepiece"], toks["byte_bpe"]
    eos = (s_tok.eos_token_id, t_tok.eos_token_id)
    retok = cross_samples.SampleRetokenizer(
        examples=[Example(uid="0", instruction="say", input="", responses=("x",))],
        source_index=np.asarray([0]), student=s_tok, teacher=t_tok,
        spellings=(spell["sentencepiece"], spell["byte_bpe"]), template="compact",
        add_bos=False, eos=eos, pad=0, max_prompt_length=64, buckets=(64,),
        student_prepends=vocab_map.prepends_space(s_tok, spell["sentencepiece"]),
    )  # fmt: skip
    ids = s_tok("the dog", add_special_tokens=False)["input_ids"] + [eos[0]]
    assert spell["sentencepiece"][ids[0]].startswith(b" ")
    width, new = 4, 8
    tokens, mask = np.zeros((1, new), np.int32), np.zeros((1, new), bool)
    tokens[0, : len(ids)], mask[0, : len(ids)] = ids, True
    prompt = {
        "prompt_tokens": np.ones((1, width), np.int32),
        "prompt_mask": np.ones((1, width), bool),
    }
    out = retok.add_teacher({**prompt, "tokens": tokens, "mask": mask}, np.asarray([0]))
    answer = t_tok("the dog", add_special_tokens=False)["input_ids"] + [eos[1]]
    row = out["teacher_tokens"][0]
    n_p = int(out["teacher_loss_mask"][0].argmax())  # the first scored column
    np.testing.assert_array_equal(row[n_p + 1 : n_p + 1 + len(answer)], answer)
    s_chunk, t_chunk = out["student_chunk"][0], out["teacher_chunk"][0]
    for k in range(int(out["chunk_mask"][0].sum())):
        s_ids = tokens[0, np.flatnonzero(s_chunk == k) + 1 - width]
        t_ids = row[np.flatnonzero(t_chunk == k) + 1]
        s_bytes = b"".join(spell["sentencepiece"][i] or b"<eos>" for i in s_ids)
        t_bytes = b"".join(spell["byte_bpe"][i] or b"<eos>" for i in t_ids)
        assert s_bytes.removeprefix(b" ") == t_bytes if k == 0 else s_bytes == t_bytes


@pytest.mark.slow
def test_gkd_trains_on_its_samples_with_a_teacher_of_another_tokenizer(tmp_path, toks):
    """GKD through the CLI (tiny presets): every step samples (gkd.lmbda=1), the
    samples are re-tokenised for the teacher, and the ALM loss is finite and > 0."""
    import json

    from classkd_jax import train

    toks["byte_bpe"].save_pretrained(str(tmp_path / "tok"))
    argv = [
        "--config",
        "configs/gkd.py:size=tiny",
        "--workdir",
        str(tmp_path / "run"),
        f"--config.teacher.tokenizer={tmp_path / 'tok'}",
        "--config.data.pack=False",
        "--config.eval_every=0",
        "--config.gkd.lmbda=1.0",
        "--config.steps=3",
        "--config.log_every=1",
    ]
    assert train.main(argv) == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    values = [m["xt_alm"] for m in lines if "xt_alm" in m]
    assert len(values) == 3 and all(np.isfinite(values)) and all(v > 0 for v in values)
    assert all(m["sampling_share"] > 0 for m in lines if "xt_alm" in m)


@pytest.mark.slow
def test_classkd_through_exact_match_on_one_tokenizer_is_classkd():
    """ClassKD with the forward KL on- and off-policy: through the cross path with
    one tokenizer and 'exact', the student's and the classmate's losses, the gap's
    KLs, the misfeedback and both updates equal plain ClassKD's on the same rows
    (dataset rows, and 'samples' re-tokenised for the teacher on the host)."""
    import jax

    changes = {"classkd.on_policy_divergence": "forward_kl", "sampling.max_new_tokens": 64}
    plain = KDStep(None, "classkd", **changes)
    xt = KDStep("exact", "classkd", **changes)
    a, b = plain.classkd_batch(64), xt.classkd_batch(64)
    off, on = b["off"], b["on"]
    np.testing.assert_array_equal(np.asarray(off["exact_mask"]), np.asarray(off["loss_mask"]))
    assert np.asarray(on["exact_mask"]).sum() == np.asarray(on["mask"]).sum()  # one-token chunks
    state_a, metrics_a = plain.run(a)
    state_b, metrics_b = xt.run(b)
    keys = ("loss", "off_kd", "on_kd", "misfeedback", "classmate_loss", "gap_step")
    for key in keys:
        np.testing.assert_allclose(
            metrics_b[key], metrics_a[key], rtol=1e-5, atol=1e-7, err_msg=key
        )
    assert metrics_a["misfeedback"] != 0 and metrics_a["classmate_updated"] == 1
    for x, y in zip(jax.tree.leaves(state_b), jax.tree.leaves(state_a), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=0)


def test_bos_on_the_teachers_side_only(toks):
    """teacher.add_bos=True with a student that takes no BOS: every teacher prompt
    starts with the teacher's BOS and the response chunks are those without it."""
    from classkd_jax.data import pipeline
    from classkd_jax.training import data as data_lib
    from classkd_jax.training import roles

    config = _kd_config(**{"data.synthetic.num_train": 64})
    student, _ = roles.resolve_tokenizer(config)
    teacher = toks["sentencepiece"]
    examples = pipeline.load_split(config.data, "train")
    train = pipeline.tokenize_examples_for(config.data, student, examples)
    plain = data_lib.build_cross(config, examples, train, student, teacher)
    with config.unlocked():
        config.teacher.add_bos = True
    bos = data_lib.build_cross(config, examples, train, student, teacher)
    assert not config.data.add_bos and all(
        p[0] == teacher.bos_token_id for p in bos.teacher.prompts
    )
    longest = int(config.data.max_prompt_length)  # a long prompt is cut after its BOS
    for p, q in zip(bos.teacher.prompts, plain.teacher.prompts, strict=True):
        assert len(p) == min(len(q) + 1, longest)
        np.testing.assert_array_equal(p[1:], q[len(q) - (len(p) - 1) :])
    # Responses that max_length did not cut shorter on the BOS side align as before.
    pairs = zip(bos.teacher.responses, plain.teacher.responses, strict=True)
    same = [i for i, (r, q) in enumerate(pairs) if len(r) == len(q)]
    assert len(same) > len(bos.alignments) // 2
    for i in same:
        np.testing.assert_array_equal(bos.alignments[i].a, plain.alignments[i].a)
        np.testing.assert_array_equal(bos.alignments[i].b, plain.alignments[i].b)
    batch = next(pipeline.make_iterator(config.data, student, "train", kind="full", data=train))
    rows_bos, rows = bos.add_teacher(batch, train), plain.add_teacher(batch, train)
    # The teacher's columns move one to the right (but where a prompt was cut after
    # its BOS); the student's arrays stay.
    keep = np.asarray([i in same for i in batch["index"]])
    grew = np.asarray([len(plain.teacher.prompts[i]) < longest for i in batch["index"]])
    assert (keep & grew).any()
    np.testing.assert_array_equal(rows_bos["student_chunk"][keep], rows["student_chunk"][keep])
    first = (rows["first_mask"] > 0) & (keep & grew)[:, None]
    np.testing.assert_array_equal(
        rows_bos["teacher_index"][first], rows["teacher_index"][first] + 1
    )
