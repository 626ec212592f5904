"""The demo's shipped models: what configs/demo.py says they are, made by the command
the README gives, and a teacher that beats the student's initialisation; the
cross-tokenizer testbed's teacher (`teacher_tokenizer=sp`) likewise."""

import json
from pathlib import Path

import pytest

from classkd_jax import demo
from classkd_jax.config_utils import import_sibling
from classkd_jax.models import load_hf

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = import_sibling(str(ROOT / "configs" / "demo.py"), "demo")


@pytest.fixture(scope="module")
def models():
    return {name: load_hf(path) for name, path in demo.shipped().items()}


@pytest.mark.parametrize("name, shape", [("teacher", "TEACHER"), ("student_init", "STUDENT")])
def test_the_shipped_models_have_the_configs_shapes(models, name, shape):
    config, _ = models[name]
    for key, value in getattr(DEMO_CONFIG, shape).items():
        assert getattr(config, key) == value, (name, key)


def test_the_student_is_four_to_six_times_smaller(models):
    from classkd_jax.training.roles import count_params

    ratio = count_params(models["teacher"][1]) / count_params(models["student_init"][1])
    assert 4.0 <= ratio <= 6.0, ratio


@pytest.mark.parametrize("role", ["teacher", "student_init"])
def test_each_shipped_model_records_the_command_that_made_it(role):
    made = json.loads((demo.shipped()[role] / "TRAINED.json").read_text())
    assert made["command"].startswith("python -m classkd_jax.train --config configs/demo.py:")
    assert f"role={role}" in made["command"]
    config = DEMO_CONFIG.get_config(f"method=sft,role={role}")
    assert made["steps"] == config.steps


def test_the_demo_config_distils_from_the_shipped_models():
    config = DEMO_CONFIG.get_config("method=classkd")
    assert Path(config.teacher.path) == demo.shipped()["teacher"]
    assert Path(config.student.path) == demo.shipped()["student_init"]
    assert config.classmate.path == ""  # the student's initial weights
    assert config.data.synthetic.num_test >= 600


def test_the_teacher_beats_the_student_init_on_dev(models):
    """Greedy dev ROUGE-L on 64 dev examples (the shipped numbers, measured on 200,
    are in each model's TRAINED.json)."""
    from classkd_jax.comparison import scoring
    from classkd_jax.sharding import make_mesh
    from classkd_jax.training import roles

    config = DEMO_CONFIG.get_config("method=sft")
    tokenizer, _ = roles.resolve_tokenizer(config)
    examples, prompts = scoring.split_prompts(config, tokenizer, "dev")
    mesh = make_mesh(data=-1)
    scores = {
        name: scoring.score_model(model, examples[:64], prompts[:64], config, tokenizer, mesh)[0]
        for name, model in models.items()
    }
    assert scores["teacher"]["rougeL"] > scores["student_init"]["rougeL"] + 5.0, scores


@pytest.mark.parametrize("name", ["sp", "spw"])
def test_the_cross_teachers_are_the_teacher_on_their_own_tokenizers(name):
    from transformers import AutoTokenizer

    teacher = DEMO_CONFIG.ASSETS / f"teacher_{name}"
    config, _ = load_hf(teacher)
    for key, value in DEMO_CONFIG.TEACHER.items():
        assert getattr(config, key) == value, key
    shipped = json.loads((DEMO_CONFIG.TEACHER_TOKENIZERS[name] / "tokenizer.json").read_text())
    assert json.loads((teacher / "tokenizer.json").read_text())["model"] == shipped["model"]
    assert config.vocab_size == len(AutoTokenizer.from_pretrained(str(teacher))) == 768
    made = json.loads((teacher / "TRAINED.json").read_text())
    assert f"role=teacher,teacher_tokenizer={name} " in made["command"]
    assert made["steps"] == DEMO_CONFIG.get_config("method=sft,role=teacher").steps


def test_the_cross_variant_distils_the_shipped_init_from_the_sp_teacher():
    config = DEMO_CONFIG.get_config("method=kd,teacher_tokenizer=sp")
    same = DEMO_CONFIG.get_config("method=kd")
    assert Path(config.student.path) == Path(same.student.path) == demo.shipped()["student_init"]
    assert (
        Path(config.teacher.path)
        == Path(config.teacher.tokenizer)
        == DEMO_CONFIG.ASSETS / "teacher_sp"
    )
    assert not config.data.pack  # what the cross-tokenizer path needs
    seqkd = DEMO_CONFIG.get_config("method=seqkd,teacher_tokenizer=spw")
    assert seqkd.data.pack and seqkd.teacher.tokenizer.endswith("teacher_spw")  # text: no rows
    assert (config.steps, config.student.lr, config.seed) == (same.steps, same.student.lr, 0)
    for bad in ("method=sft,teacher_tokenizer=sp", "role=student_init,method=sft,"
                "teacher_tokenizer=sp", "method=kd,teacher_tokenizer=bpe"):  # fmt: skip
        with pytest.raises(ValueError, match="teacher_tokenizer"):
            DEMO_CONFIG.get_config(bad)


def test_the_sp_teacher_scored_in_its_own_tokens_beats_the_student_init(models, monkeypatch):
    """compare's scorer reads the teacher's prompts with the teacher's tokenizer (64
    dev examples; with the student's it would feed it ids of another vocabulary)."""
    from classkd_jax.comparison import execute, scoring

    split_prompts = scoring.split_prompts

    def first_64(*args):
        examples, prompts = split_prompts(*args)
        return examples[:64], prompts[:64]

    monkeypatch.setattr(scoring, "split_prompts", first_64)
    config = DEMO_CONFIG.get_config("method=kd,teacher_tokenizer=sp")
    score = execute._Scorer("dev")
    teacher, _ = score(load_hf(DEMO_CONFIG.ASSETS / "teacher_sp"), config, "teacher")
    init, _ = score(models["student_init"], config, "student")
    assert teacher["rougeL"] > init["rougeL"] + 5.0, (teacher, init)
