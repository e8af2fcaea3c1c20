"""Each GFlowNet objective's recommended exploration and replay: declared, buildable, valid for it,
followed by every shipped config of that objective, listed in the docs, and a run that departs from
it says so in exactly one line when it is composed."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from gfnlm.contracts import registry
from gfnlm.contracts.errors import ConfigError
from gfnlm.exploration import (
    check_off_policy,
    departure_note,
    recommended_choice,
    recommended_section,
)
from gfnlm.training.compose import compose
from gfnlm.training.config import load_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from shipped_configs_exact import gflownet_configs, shipped_config

GFLOWNET = ("tb", "tb_token", "la_tb", "subtb", "db")  # the objectives with a fixed point


def built(kind: str, choice) -> object:
    return registry.build(kind, choice["name"], dict(choice["options"]))


@pytest.mark.parametrize("name", GFLOWNET)
def test_every_gflownet_objective_declares_a_valid_choice(name: str) -> None:
    choice = recommended_choice(registry.lookup("objective", name))
    assert choice is not None, f"{name} declares no recommended exploration"
    exploration, replay = (built(kind, c) for kind, c in zip(("exploration", "replay"), choice))
    check_off_policy(registry.build("objective", name), exploration, replay)  # raises if invalid
    # the declaration builds back to itself: nothing in it is ignored or misspelt
    assert departure_note(registry.build("objective", name), exploration, replay) is None


@pytest.mark.parametrize("name", ["grpo", "entropy_min"])
def test_objectives_without_a_fixed_point_recommend_nothing(name: str) -> None:
    assert recommended_choice(registry.lookup("objective", name)) is None
    uniform = registry.build("exploration", "uniform_mix", epsilon=0.3)
    assert departure_note(registry.build("objective", name), uniform, None) is None


def test_the_shipped_gflownet_configs_are_found() -> None:
    # every config file is either a GFlowNet objective's or one of the RL / EM baselines'
    configs = gflownet_configs()
    assert {"default", "tb_traj", "tb_token", "subtb"} <= set(configs)
    others = {p.stem for p in (REPO / "configs").glob("*.yaml")} - set(configs)
    assert {shipped_config(REPO / "configs" / f"{o}.yaml").objective.name for o in others} <= {
        "grpo",
        "entropy_min",
    }


@pytest.mark.parametrize("name", sorted(gflownet_configs()))
def test_every_shipped_gflownet_config_uses_its_objectives_choice(name: str) -> None:
    config = gflownet_configs()[name]
    objective = registry.build("objective", config.objective.name, config.objective.options)
    target = registry.build("target", config.target.name, config.target.options)

    def section(kind: str) -> tuple[str, dict]:  # auto: the recommendation, as a run resolves it
        given = getattr(config, kind)
        if given.name == "auto":
            return recommended_section(kind, objective, target)
        return given.name, given.options

    exploration = registry.build("exploration", *section("exploration"))
    replay = registry.build("replay", *section("replay"))
    note = departure_note(objective, exploration, replay, target)
    assert note is None, f"configs/{name}.yaml departs from {config.objective.name!r}'s choice"


def test_an_option_value_can_change_the_choice() -> None:
    # LA-TB with the group-mean log Z' reached every setting on-policy; with a learned one it needed
    # tempered exploration + replay. The class answers for its default options.
    learned = registry.build("objective", "la_tb")
    group_mean = registry.build("objective", "la_tb", log_z_source="group_mean")
    on_policy = ({"name": "none", "options": {}}, {"name": "none", "options": {}})
    assert recommended_choice(group_mean) == on_policy
    assert recommended_choice(learned) == recommended_choice(registry.lookup("objective", "la_tb"))
    assert recommended_choice(learned)[0]["name"] == "tempered"
    assert departure_note(group_mean, None, None) is None
    assert departure_note(learned, None, None) is not None
    tempered = built("exploration", recommended_choice(learned)[0])
    note = departure_note(group_mean, tempered, built("replay", recommended_choice(learned)[1]))
    assert note is not None and "'la_tb' (log_z_source=group_mean)" in note
    assert "with on-policy; this run uses tempered" in note


def test_the_targets_regime_can_change_the_choice() -> None:
    # TB toward a sharpening target reached every sharpening setting on-policy; toward a flattening
    # one (or an unknown one) it needs tempered exploration + replay
    tb = registry.build("objective", "tb")
    sharpening = registry.build("target", "alpha_power", alpha=4.0)
    flattening = registry.build("target", "alpha_power", alpha=0.5)
    assert (sharpening.regime, flattening.regime) == ("sharpening", "flattening")
    assert registry.build("target", "alpha_power", alpha=1.0).regime is None
    on_policy = ({"name": "none", "options": {}}, {"name": "none", "options": {}})
    assert recommended_choice(tb, sharpening) == on_policy
    assert recommended_choice(tb, flattening) == recommended_choice(tb)
    assert recommended_choice(tb)[0]["name"] == "tempered"
    assert departure_note(tb, None, None, sharpening) is None
    note = departure_note(tb, None, None, flattening)
    assert note is not None and "this run uses on-policy" in note
    tempered = built("exploration", recommended_choice(tb)[0])
    note = departure_note(tb, tempered, None, sharpening)
    assert note is not None and "'tb' (toward a sharpening target)" in note
    # an option condition comes first: group-mean LA-TB is on-policy toward any target
    group_mean = registry.build("objective", "la_tb", log_z_source="group_mean")
    assert recommended_choice(group_mean, sharpening) == on_policy


def test_auto_takes_the_recommendation_toward_the_runs_target() -> None:
    notes = []

    def composed(overrides: list[str], file: str = "tb_traj") -> tuple[object, object]:
        config = load_config(REPO / f"configs/{file}.yaml", overrides)
        components = compose(config, 64, num_train_prompts=10)
        assert components.departure is None
        notes.append(components.auto_note)
        return components.exploration, components.replay

    auto = ["exploration.name=auto", "replay.name=auto"]
    exploration, replay = composed([*auto, "target.options.alpha=4"])
    assert not exploration.changes_sampling and not replay.active  # on-policy
    assert (
        notes[-1]
        == "note: auto is on-policy, what objective 'tb' recommends toward a sharpening target"
    )
    exploration, replay = composed([*auto, "target.options.alpha=0.5"])
    assert exploration == registry.build("exploration", "tempered", temperature=1.1)
    assert replay == registry.build("replay", "reward_prioritised", ratio=0.25)
    assert "tempered (temperature=1.1)" in notes[-1] and "toward a flattening target" in notes[-1]
    composed(["exploration.name=none", "replay.name=none"])
    assert notes[-1] is None  # nothing named auto: nothing to say
    exploration, replay = composed(["exploration.name=auto"], "subtb")  # replay: the file's auto
    assert not exploration.changes_sampling and replay.active


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["exploration.name=auto", "exploration.options.temperature=2"],
            "exploration.options={'temperature': 2}: exploration.name='auto' takes",
        ),
        (
            ["objective.name=grpo", "replay.name=auto"],
            "replay.name='auto': objective 'grpo' recommends no exploration or replay",
        ),
    ],
)
def test_auto_refuses_options_and_objectives_without_a_choice(
    overrides: list[str], message: str
) -> None:
    config = load_config(REPO / "configs/default.yaml", overrides)
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        compose(config, 64, num_train_prompts=10)
    assert "\n" not in str(raised.value)


def composed_stderr(capsys: pytest.CaptureFixture[str], overrides: list[str]) -> list[str]:
    """The note composing configs/default.yaml with ``overrides`` gives (a trainer prints it once
    every check has passed), as lines; composing itself prints nothing."""
    capsys.readouterr()
    config = load_config(REPO / "configs/default.yaml", overrides)
    note = compose(config, 64, num_train_prompts=10).departure
    assert capsys.readouterr().err == ""
    return [f"gfnlm: {note}"] if note else []


def test_a_run_that_departs_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(REPO / "configs/default.yaml")
    objective = registry.build("objective", config.objective.name, config.objective.options)
    exploration, _ = recommended_choice(objective)
    # an exploration other than the declared one (or a different option value of the same one)
    other = (
        ["exploration.name=uniform_mix", "exploration.options.epsilon=0.3"]
        if exploration["name"] != "uniform_mix"
        else ["exploration.name=tempered", "exploration.options.temperature=3.0"]
    )
    lines = composed_stderr(capsys, other)
    assert len(lines) == 1, lines
    assert lines[0].startswith("gfnlm: note: objective 'la_tb'")
    assert "this run uses uniform_mix" in lines[0] or "this run uses tempered" in lines[0]
    declared = [
        f"{kind}.{key}={value}"
        for kind, choice in zip(("exploration", "replay"), recommended_choice(objective))
        for key, value in [("name", choice["name"])]
        + [(f"options.{k}", v) for k, v in choice["options"].items()]
    ]
    assert composed_stderr(capsys, declared) == []  # following the declaration: silent


def test_a_departure_is_named_in_its_line() -> None:
    tb = registry.build("objective", "tb")
    declared_exploration, declared_replay = recommended_choice(tb)
    exploration = built("exploration", declared_exploration)
    note = departure_note(tb, exploration, None)  # the declared exploration, replay dropped
    if declared_replay["name"] == "none":
        assert note is None
        note = departure_note(tb, exploration, registry.build("replay", "reward_prioritised"))
    assert note is not None and "\n" not in note
    assert "'tb'" in note and "this run uses" in note


def test_the_docs_table_lists_every_declaration() -> None:
    spec = importlib.util.spec_from_file_location("hooks", REPO / "tools" / "mkdocs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    table = hooks.recommended_exploration_table()
    for name in GFLOWNET:
        exploration, replay = recommended_choice(registry.lookup("objective", name))
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"exploration: {{name: {exploration['name']}" in row
        assert f"replay: {{name: {replay['name']}" in row
    # and a row per option value that changes the choice
    variant = next(line for line in table.splitlines() if "`log_z_source: group_mean`" in line)
    assert variant.startswith("| `la_tb` with") and "| on-policy |" in variant
    assert "`grpo`" not in table


def test_a_trainer_prints_the_note_once_after_its_checks(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gfnlm.training.trainer import Trainer

    overrides = [f"model.path={tiny_model_dir}", f"train.out_dir={tmp_path / 'run'}"]
    departing = ["exploration.name=tempered", "exploration.options.temperature=1.5"]
    config = load_config(REPO / "configs/default.yaml", [*overrides, *departing])
    note = compose(config, 64, num_train_prompts=10).departure
    assert note is not None
    capsys.readouterr()
    trainer = Trainer(config, progress=False)
    trainer.close()
    assert capsys.readouterr().err.splitlines() == [f"gfnlm: {note}"]
    # a run with auto says what auto became, once
    overrides = [f"model.path={tiny_model_dir}", f"train.out_dir={tmp_path / 'auto'}"]
    trainer = Trainer(load_config(REPO / "configs/tb_traj.yaml", overrides), progress=False)
    trainer.close()
    assert capsys.readouterr().err.splitlines() == [
        "gfnlm: note: auto is on-policy, what objective 'tb' recommends toward a sharpening target"
    ]


def test_the_ladder_stops_at_the_first_rung_that_reaches_every_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/behaviour_ladder.py on one tiny setting: with a goal every rung meets, each
    climb stops at rung 1 (on-policy), which disagrees with most declarations (exit 1); with a
    goal no rung meets it climbs all 8 rungs and chooses nothing."""
    import behaviour_ladder

    # two groups: α = 0.5 and α = 2, one setting of each regime
    tiny = ["--groups", "2", "--seeds-per-group", "1", "--draw-seeds", "0", "--steps", "5"]
    tiny += ["--batch-size", "8", "--workers", "1", "--out", str(tmp_path)]
    assert behaviour_ladder.main([*tiny, "--goal", "1.0"]) == 1
    out = capsys.readouterr().out
    cells = [line.split(" | ") for line in out.splitlines() if line.startswith("| ")]
    rungs = [row[2] for row in cells if len(row) > 2 and row[2].isdigit()]
    assert rungs and set(rungs) == {"1"}  # every climb stopped at on-policy
    verdicts = [row for row in cells if row[-1].strip(" |") in ("yes", "NO")]
    assert len(verdicts) == 3 * len(behaviour_ladder.OBJECTIVES)  # all, α > 1, α < 1
    for row in verdicts:  # a declaration agrees exactly when it is on-policy
        assert (row[-1].strip(" |") == "yes") == (row[-2] == "on-policy"), row

    assert behaviour_ladder.main([*tiny, "--goal", "-1.0", "--objectives", "subtb"]) == 1
    out = capsys.readouterr().out
    cells = [line.split(" | ") for line in out.splitlines() if line.startswith("| subtb | all |")]
    assert [row[2] for row in cells] == [str(i) for i in range(1, 9)]
    assert "none reaches every setting" in out
