"""A run composed in Python: every config field checked by type when built, components given as
names, dicts or ComponentConfig, rewards as functions (saved by import path), prompts as data in
memory (saved by label, never silently replaced on resume), and the command line's ``--import``
from the working directory with ``--quiet`` hiding transformers' loading bars."""

import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import datasets
import pytest
import torch
from mktestdocs import grab_code_blocks

from gfnlm.contracts.errors import ConfigError, InputError
from gfnlm.contracts.registry import RegistryError, import_object, object_path
from gfnlm.objectives.base import component_choice
from gfnlm.tasks.records import in_memory_label, load_records
from gfnlm.tasks.rewards import distinct_words
from gfnlm.training.compose import compose
from gfnlm.training.config import (
    ComponentConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    SamplingConfig,
    TrainConfig,
    load_config,
    saved_form,
    to_yaml,
)

REPO = Path(__file__).resolve().parents[1]
RECORDS = [{"question": "What is 2+2?", "answers": ["4"]}, {"question": "Who wrote Hamlet?"}]


def module_level_reward(rollouts):
    """A reward a config can name: ``test_python_api:module_level_reward``."""
    return rollouts.lengths.float()


# ------------------------------------------------------------------------------------------------
# Types


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: SamplingConfig(max_new_tokens="8"),
            "sampling.max_new_tokens='8': must be of type int",
        ),
        (
            lambda: SamplingConfig(temperature="1.0"),
            "sampling.temperature='1.0': must be of type float",
        ),
        (
            lambda: SamplingConfig(samples_per_prompt=True),
            "sampling.samples_per_prompt=True: must be of type int",
        ),
        (lambda: ModelConfig(lora="false"), "model.lora='false': must be of type bool"),
        (lambda: ModelConfig(lora_targets=["q_proj", 3]), "model.lora_targets=.*at index 1"),
        (lambda: TrainConfig(steps=2.0), "train.steps=2.0: must be of type int, got float"),
        (lambda: TrainConfig(device=None), "train.device=None: must be of type str"),
        (lambda: RunConfig(imports="my_module"), "imports='my_module': must be of type list"),
        (lambda: RunConfig(train=5), "train=5: must be of type TrainConfig"),
        (lambda: RunConfig(train={"stepz": 2}), "train.stepz: no such field.*did you mean 'steps'"),
        (lambda: RunConfig(objective=3), "objective=3: must be a registered name"),
        (lambda: RunConfig(objective={"nam": "tb"}), "objective=.*unknown key 'nam'"),
        (lambda: RunConfig(objective={"name": 5}), "objective.name=5: must be of type str"),
        (
            lambda: RunConfig(target={"name": "x", "options": 3}),
            "target.options=3: must be of type dict",
        ),
        (lambda: DataConfig(train=5), "data.train=5: must be a path \\(str\\), a datasets.Dataset"),
        (lambda: DataConfig(train=["a", "b"]), "data.train=.*a list of dicts, got list"),
        (lambda: DataConfig(eval=[]), "data.eval: the data set given in memory has no rows"),
    ],
)
def test_a_wrong_type_is_one_line_naming_the_field(make, message) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        make()
    assert len(str(error.value).splitlines()) == 1


def test_assigning_a_field_is_checked_too() -> None:
    config = RunConfig()
    with pytest.raises(ConfigError, match="train.lr='1e-4': must be of type float"):
        config.train.lr = "1e-4"
    config.objective = "tb"  # a name still converts on assignment
    assert config.objective == ComponentConfig("tb")


def test_yaml_and_overrides_still_convert_their_text(tmp_path: Path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("sampling: {max_new_tokens: '16'}\ntrain: {lr: 1}\n")
    config = load_config(file, ["train.steps=3", "model.lora=false"])
    assert (config.sampling.max_new_tokens, config.train.steps) == (16, 3)
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.model.lora is False


def test_a_component_is_a_name_a_dict_or_a_component_config() -> None:
    recommended = component_choice("tempered", temperature=1.5)  # a read-only mapping
    config = RunConfig(
        objective="tb",
        target={"name": "alpha_power", "options": {"alpha": 2.0}},
        logz=ComponentConfig("table"),
        exploration=recommended,
    )
    assert config.objective == ComponentConfig("tb")
    assert config.target == ComponentConfig("alpha_power", {"alpha": 2.0})
    assert config.exploration == ComponentConfig("tempered", {"temperature": 1.5})
    assert config.logz.name == "table" and config.replay == ComponentConfig("none")
    assert RunConfig(train={"steps": 7}).train == TrainConfig(steps=7)


# ------------------------------------------------------------------------------------------------
# Functions in the config


def test_a_function_is_saved_by_its_import_path_and_loaded_back(tmp_path: Path) -> None:
    config = RunConfig(
        target={"name": "reward", "options": {"reward": module_level_reward}}, objective="grpo"
    )
    assert config.target.options["reward"] is module_level_reward  # the config holds it
    text = to_yaml(config)
    assert "reward: test_python_api:module_level_reward" in text
    file = tmp_path / "config.yaml"
    file.write_text(text)
    loaded = load_config(file)
    components = compose(loaded, hidden_size=8, num_train_prompts=2)
    assert components.target.reward is module_level_reward
    library = saved_form(
        attrs.evolve(config, target={"name": "reward", "options": {"reward": distinct_words}})
    )
    assert library.target.options == {"reward": "gfnlm.tasks.rewards:distinct_words"}


def make_local_function():
    def local(rollouts):
        return rollouts.lengths.float()

    return local


@pytest.mark.parametrize("reward", [lambda r: r.lengths.float(), make_local_function()])
def test_a_function_without_an_import_path_is_refused_when_composed(reward) -> None:
    config = RunConfig(target={"name": "reward", "options": {"reward": reward}}, objective="grpo")
    with pytest.raises(ConfigError, match="target.options.reward=.*has no import path") as error:
        compose(config, hidden_size=8, num_train_prompts=2)
    assert len(str(error.value).splitlines()) == 1


def test_an_option_that_is_no_yaml_value_is_refused_when_composed() -> None:
    config = RunConfig(sampling={"sampler_options": {"batch_size": torch.tensor(4)}})
    with pytest.raises(ConfigError, match="sampling.sampler_options.batch_size=.*got Tensor"):
        compose(config, hidden_size=8, num_train_prompts=2)


def test_object_paths() -> None:
    assert object_path(module_level_reward) == "test_python_api:module_level_reward"
    assert object_path(TrainConfig) == "gfnlm.training.config:TrainConfig"
    assert object_path(lambda: 0) is None and object_path(make_local_function()) is None
    assert import_object("gfnlm.training.config:TrainConfig.section", "x") == "train"
    missing = r"reward='gfnlm.tasks.rewards:nope': cannot import it \(module .* has no 'nope'\)"
    with pytest.raises(RegistryError, match=missing):
        import_object("gfnlm.tasks.rewards:nope", "reward")
    with pytest.raises(RegistryError, match="reward='nothing': must name an object"):
        import_object("nothing", "reward")


# ------------------------------------------------------------------------------------------------
# Data in memory


def test_data_in_memory_reads_like_a_file(tmp_path: Path) -> None:
    dataset = datasets.Dataset.from_list([{"problem": "1+1?", "answer": "2"}])
    rows = load_records(dataset, "data.train", question_field="problem", answer_field="answer")
    assert rows == [{"problem": "1+1?", "answer": "2", "question": "1+1?", "answers": ["2"]}]
    assert load_records(RECORDS, "data.train") == [RECORDS[0], RECORDS[1]]
    with pytest.raises(
        InputError, match=r"data.eval=<in-memory list of 2 records, .* row 2 has no"
    ):
        load_records(RECORDS, "data.eval", require_answers=True)


def test_data_in_memory_is_saved_by_label_and_the_label_is_never_read_as_a_path() -> None:
    dataset = datasets.Dataset.from_list(RECORDS[:1])
    config = RunConfig(data={"train": RECORDS, "eval": dataset})
    saved = saved_form(config)
    assert re.fullmatch(r"<in-memory list of 2 records, sha256 [0-9a-f]{16}>", saved.data.train)
    assert saved.data.eval == f"<in-memory Dataset, 1 rows, fingerprint {dataset._fingerprint}>"
    assert (
        in_memory_label([dict(r) for r in RECORDS]) == saved.data.train
    )  # equal data, equal label
    assert in_memory_label(RECORDS[:1]) != saved.data.train
    with pytest.raises(InputError, match="given this data set in memory, and it is not saved"):
        load_records(saved.data.train, "data.train")


def test_a_resume_compares_data_in_memory_by_label(tiny_model_dir: Path, tmp_path: Path) -> None:
    from gfnlm.training import resume

    config = RunConfig(model={"path": str(tiny_model_dir)}, data={"train": RECORDS, "eval": ""})
    file = tmp_path / "config.yaml"
    file.write_text(to_yaml(config))
    assert resume.config_differences(saved_form(config), load_config(file)) == []
    other = attrs.evolve(config, data=attrs.evolve(config.data, train=RECORDS[:1]))
    (difference,) = resume.config_differences(saved_form(other), load_config(file))
    assert difference[0] == "data.train"


# ------------------------------------------------------------------------------------------------
# A loaded model as model.path


def test_a_loaded_model_is_saved_once_by_its_weights_and_trains(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    from gfnlm.training.trainer import Trainer

    monkeypatch.setenv("GFNLM_CACHE", str(tmp_path / "cache"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    folder = Path(ModelConfig(path=model).path)
    assert folder.parent == tmp_path / "cache" / "models"
    assert ModelConfig(path=model).path == str(folder)  # the same weights: the same folder
    saved = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    for (name, a), b in zip(model.state_dict().items(), saved.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        model.model.norm.weight.mul_(2.0)
    config = RunConfig(
        model={"path": model, "lora_targets": ["q_proj"]},
        sampling={"samples_per_prompt": 2, "max_new_tokens": 4},
        data={"train": RECORDS, "eval": ""},
        train={"steps": 1, "prompts_per_step": 1, "device": "cpu", "out_dir": str(tmp_path / "r")},
    )
    assert config.model.path != str(folder)  # edited weights: a folder of their own
    assert f"path: {config.model.path}" in to_yaml(config)
    trainer = Trainer(config, progress=False)
    try:
        assert len(trainer.train()["history"]) == 1
    finally:
        trainer.close()


def test_a_loaded_model_without_its_tokenizer_or_with_an_adapter_is_one_line(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("GFNLM_CACHE", str(tmp_path / "cache"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.name_or_path = str(tmp_path / "gone")
    with pytest.raises(ConfigError, match=r"^model\.path=<LlamaForCausalLM>: no tokenizer in"):
        ModelConfig(path=model)
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="a PEFT model; pass model.merge_and_unload"):
        ModelConfig(path=wrapped)
    assert not (tmp_path / "cache" / "models").exists() or not any(
        (tmp_path / "cache" / "models").iterdir()
    )


# ------------------------------------------------------------------------------------------------
# The command line: --import from the working directory, --quiet


def extending_page_components() -> str:
    """The modules' worth of code of docs/extending.md: its blocks that register components."""
    blocks = grab_code_blocks((REPO / "docs" / "extending.md").read_text(), lang="python")
    return "\n\n".join(block for block in blocks if "@register(" in block)


def test_the_extending_pages_import_example_runs_from_its_folder(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    page = (REPO / "docs" / "extending.md").read_text()
    run_yaml = re.search(r"```yaml\n# my_run.yaml\n(.*?)```", page, re.DOTALL).group(1)
    command = re.search(r"```bash\n(gfnlm train my_run.yaml --import my_components.*)\n```", page)
    (tmp_path / "my_components.py").write_text(extending_page_components())
    (tmp_path / "my_run.yaml").write_text(run_yaml)
    args = command.group(1).split()[1:]
    gfnlm = Path(sys.executable).parent / "gfnlm"  # the console script: no "" on sys.path
    small = [
        "train.steps=1",
        "train.prompts_per_step=2",
        "sampling.max_new_tokens=6",
        f"model.path={tiny_model_dir}",
        "data.eval=''",
        f"train.out_dir={tmp_path / 'run'}",
        "train.device=cpu",
        "--quiet",
    ]
    result = subprocess.run(
        [str(gfnlm), *args, *small],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "checkpoints").is_dir()
    assert "objective:\n  name: vargrad" in (tmp_path / "run" / "config.yaml").read_text()
    # --quiet: no progress bar at all, transformers' weight-loading bars included
    assert "Loading weights" not in result.stderr and "it/s" not in result.stderr, result.stderr
