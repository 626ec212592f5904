"""Instruction-data sources, benchmark layouts and prompt templates, on fixture files."""

import json

import pytest

from classkd_jax.data import benchmarks, sources, templates

# The protocol's template strings, typed out from its description (docs/baselines.md).
ALPACA_EXPECTED_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:\n"
)
ALPACA_EXPECTED_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nSummarise.\n\n### Input:\nThe sky is blue.\n\n### Response:\n"
)


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_alpaca_template_exact_strings():
    assert templates.format_prompt("Name a colour.") == ALPACA_EXPECTED_NO_INPUT
    got = templates.format_prompt("Summarise.", "The sky is blue.", "alpaca")
    assert got == ALPACA_EXPECTED_WITH_INPUT
    compact = templates.format_prompt("Summarise.", "x", "compact")
    assert compact == "### Instruction:\nSummarise.\n\n### Input:\nx\n\n### Response:\n"
    # Braces in user text are data, not format fields.
    assert "{input}" in templates.format_prompt("say {input}", "", "compact")
    with pytest.raises(ValueError, match="unknown prompt template 'chatml'"):
        templates.format_prompt("a", template="chatml")


def test_jsonl_dolly_and_minillm_schemas(tmp_path):
    dolly = _write(
        tmp_path / "dolly.jsonl",
        [
            json.dumps({"instruction": "i0", "context": "c0", "response": "r0", "category": "qa"}),
            "",  # blank lines are skipped
            json.dumps({"instruction": "i1", "context": "", "response": "  ", "category": "qa"}),
            json.dumps({"instruction": "i2", "context": "", "response": "r2", "category": "gen"}),
        ],
    )
    stats = sources.SourceStats()
    ex = sources.load_jsonl(dolly, stats=stats)
    assert [(e.instruction, e.input, e.responses, e.category) for e in ex] == [
        ("i0", "c0", ("r0",), "qa"),
        ("i2", "", ("r2",), "gen"),
    ]
    assert (stats.read, stats.kept, stats.empty_response) == (3, 2, 1)
    assert ex[1].uid == "dolly/2"  # row index in the file's records, stable under drops

    minillm = _write(
        tmp_path / "m.jsonl",
        [json.dumps({"instruction": "i", "input": "x", "output": ["a", "b", ""]})],
    )
    (e,) = sources.load_jsonl(minillm)
    assert (e.input, e.responses, e.response) == ("x", ("a", "b"), "a")

    custom = _write(tmp_path / "c.jsonl", [json.dumps({"q": "why?", "a": "because"})])
    (e,) = sources.load_jsonl(custom, columns={"instruction": "q", "response": "a"})
    assert (e.instruction, e.input, e.response) == ("why?", "", "because")


def test_jsonl_bad_input_names_file_line_and_columns(tmp_path):
    bad = _write(
        tmp_path / "bad.jsonl", [json.dumps({"instruction": "a", "response": "b"}), "{oops"]
    )
    with pytest.raises(sources.DataError, match=r"bad\.jsonl:2: malformed JSON"):
        sources.load_jsonl(bad)
    arr = _write(tmp_path / "arr.jsonl", ["[1, 2]"])
    with pytest.raises(sources.DataError, match=r"arr\.jsonl:1: expected a JSON object"):
        sources.load_jsonl(arr)
    missing = _write(
        tmp_path / "missing.jsonl",
        [
            json.dumps({"instruction": "a", "response": "b"}),
            json.dumps({"instruction": "a", "answer": "b"}),
        ],
    )
    with pytest.raises(
        sources.DataError, match=r"missing\.jsonl:2.*'response'.*\['answer', 'instruction'\]"
    ):
        sources.load_jsonl(missing)
    nocol = _write(tmp_path / "nocol.jsonl", [json.dumps({"question": "a", "answer": "b"})])
    with pytest.raises(
        sources.DataError, match=r"'instruction'.*columns found: \['answer', 'question'\]"
    ):
        sources.load_jsonl(nocol)
    with pytest.raises(
        sources.DataError, match=r"column 'q' \(mapped to 'instruction'\) not found"
    ):
        sources.load_jsonl(nocol, columns={"instruction": "q"})
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        sources.load_jsonl(tmp_path / "nowhere.jsonl")


def test_hf_datasets_saved_dir_and_json_file(tmp_path):
    import datasets

    rows = [
        {"question": "q0", "ctx": "c0", "answer": "a0"},
        {"question": "q1", "ctx": "", "answer": ""},
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    cols = {"instruction": "question", "input": "ctx", "response": "answer"}
    stats = sources.SourceStats()
    ex = sources.load_hf_dataset(str(tmp_path / "saved"), columns=cols, stats=stats)
    assert [(e.instruction, e.input, e.response) for e in ex] == [("q0", "c0", "a0")]
    assert stats.empty_response == 1

    dd = datasets.DatasetDict({"test": datasets.Dataset.from_list(rows[:1])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(sources.load_hf_dataset(str(tmp_path / "dd"), split="test", columns=cols)) == 1
    with pytest.raises(sources.DataError, match=r"no split 'train'; splits found: \['test'\]"):
        sources.load_hf_dataset(str(tmp_path / "dd"), split="train", columns=cols)

    path = _write(tmp_path / "f.jsonl", [json.dumps({"instruction": "i", "output": "o"})])
    (e,) = sources.load_hf_dataset(str(path))
    assert (e.instruction, e.response) == ("i", "o")


def test_tfds_prepared_directory(tmp_path):
    import tensorflow_datasets as tfds

    class TinyInstructions(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            text = tfds.features.Text()
            features = {"instruction": text, "context": text, "response": text}
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(3):
                yield (
                    i,
                    {"instruction": f"ins {i}", "context": "ctx" if i else "", "response": f"r{i}"},
                )

    builder = TinyInstructions(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    ex = sources.load_tfds(str(builder.data_dir), split="train")
    assert sorted((e.instruction, e.input, e.response) for e in ex) == [
        ("ins 0", "", "r0"),
        ("ins 1", "ctx", "r1"),
        ("ins 2", "ctx", "r2"),
    ]
    with pytest.raises(sources.DataError, match=r"no split 'test'; splits found: \['train'\]"):
        sources.load_tfds(str(builder.data_dir), split="test")


def _write_layout(root):
    """Fixture files in each benchmark's layout (MiniLLM's `data/` directory)."""
    for name, rel in benchmarks.BENCHMARKS.items():
        recs = [
            {
                "instruction": f"{name} task {i}",
                "input": "ctx" if i % 2 else "",
                "output": f"ans {i}",
            }
            for i in range(3)
        ]
        if name in ("sinst", "uinst"):  # several references per example
            recs = [dict(r, output=[r["output"], "alt"]) for r in recs]
        for r in recs:
            r["prompt"] = templates.format_prompt(r["instruction"], r["input"]).replace("\n", "<n>")
        _write(root / rel / "valid.jsonl", [json.dumps(r) for r in recs])
    raw = [{"instruction": f"d{i}", "context": "", "response": f"r{i}"} for i in range(1003)]
    _write(root / "dolly" / "raw.jsonl", [json.dumps(r) for r in raw])


def test_benchmark_layouts(tmp_path):
    _write_layout(tmp_path)
    assert benchmarks.BENCHMARKS == {
        "dolly": "dolly",
        "self_inst": "self-inst",
        "vicuna": "vicuna",
        "sinst": "sinst/11_",
        "uinst": "uinst/11_",
    }
    for name in benchmarks.BENCHMARKS:
        ex = benchmarks.load_eval_set(tmp_path, name)
        assert [e.uid for e in ex] == [f"{name}/test/{i}" for i in range(3)]
        assert ex[1].prompt == templates.format_prompt(f"{name} task 1", "ctx")
        assert ex[0].prompt == templates.format_prompt(f"{name} task 0")
        multi = name in ("sinst", "uinst")
        assert ex[2].references == (["ans 2", "alt"] if multi else ["ans 2"])
        # The stored prompt, with MiniLLM's <n> newline marker decoded, is the same string.
        stored = benchmarks.load_eval_set(tmp_path, name, template="file", max_examples=2)
        assert [e.prompt for e in stored] == [e.prompt for e in ex[:2]]
    compact = benchmarks.load_eval_set(tmp_path, "vicuna", template="compact")
    assert compact[0].prompt.startswith("### Instruction:\nvicuna task 0")
    dev = benchmarks.load_eval_set(tmp_path, "dolly", "dev")
    train = benchmarks.load_examples(tmp_path, "dolly", "train")
    assert len(dev) == 1000 and dev[-1].instruction == "d999"
    assert [e.instruction for e in train] == ["d1000", "d1001", "d1002"]
    with pytest.raises(ValueError, match="no dev/train split"):
        benchmarks.load_eval_set(tmp_path, "vicuna", "dev")


def test_benchmark_missing_file_names_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        benchmarks.load_eval_set(tmp_path, "sinst")
    msg = str(info.value)
    assert str(tmp_path / "sinst" / "11_" / "valid.jsonl") in msg
    assert "self-inst/valid.jsonl" in msg and "uinst/11_/valid.jsonl" in msg
    with pytest.raises(ValueError, match="unknown evaluation set 'alpaca'"):
        benchmarks.load_eval_set(tmp_path, "alpaca")
