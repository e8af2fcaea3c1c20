"""Registry requests (good and bad) and composition checks."""

import attrs
import pytest
import torch

from gfnlm.contracts import registry
from gfnlm.contracts.errors import ConfigError
from gfnlm.contracts.registry import RegistryError
from gfnlm.objectives import TrajectoryBalance

BUILTIN_OBJECTIVES = ["db", "la_tb", "subtb", "tb", "tb_token"]


def test_builtins_are_registered():
    names = registry.names("objective")
    for name in BUILTIN_OBJECTIVES:
        assert name in names
    assert names == sorted(names)
    assert {"alpha_power", "reward_tilted"} <= set(registry.names("target"))
    assert {"scalar", "table", "mlp"} <= set(registry.names("logz"))
    assert registry.lookup("objective", "tb") is TrajectoryBalance
    assert (
        TrajectoryBalance.registry_kind == "objective" and TrajectoryBalance.registry_name == "tb"
    )


def test_build_with_config_and_overrides():
    objective = registry.build("objective", "subtb", {"lamda": 0.5, "penalty": "huber"}, lamda=0.9)
    assert objective.lamda == 0.9 and objective.penalty == "huber"


# ---------------------------------------------------------------------------------------------
# Bad requests.


def test_unknown_name_lists_names_and_closest_match():
    with pytest.raises(RegistryError) as info:
        registry.lookup("objective", "tb_tokn")
    message = str(info.value)
    assert "unknown objective 'tb_tokn'" in message
    for name in BUILTIN_OBJECTIVES:
        assert name in message
    assert "did you mean 'tb_token'?" in message
    assert "\n" not in message


def test_unknown_name_without_close_match_still_lists_names():
    with pytest.raises(RegistryError) as info:
        registry.build("target", "zzzzzzzz")
    message = str(info.value)
    assert "unknown target 'zzzzzzzz'" in message
    assert "alpha_power" in message and "reward_tilted" in message
    assert "did you mean" not in message


def test_duplicate_name_is_rejected():
    @attrs.frozen
    class Another:
        pass

    with pytest.raises(RegistryError) as info:
        registry.register("objective", "tb")(Another)
    message = str(info.value)
    assert "objective 'tb' is already registered" in message
    assert "gfnlm.objectives.tb.TrajectoryBalance" in message
    assert registry.lookup("objective", "tb") is TrajectoryBalance  # the original is kept


def test_register_then_unregister_frees_the_name():
    @attrs.frozen
    class Temp:
        x: int = 1

    name = "test_registry_temp"
    registry.register("task", name)(Temp)
    try:
        assert registry.build("task", name, x=3).x == 3

        @attrs.frozen
        class Another:
            x: int = 2

        with pytest.raises(RegistryError, match="already registered"):
            registry.register("task", name)(Another)
    finally:
        registry.unregister("task", name)
    assert name not in registry.names("task")
    with pytest.raises(RegistryError, match="unknown task"):
        registry.lookup("task", name)


def test_non_attrs_class_is_rejected():
    class Plain:
        pass

    with pytest.raises(RegistryError, match="must be an attrs class"):
        registry.register("task", "test_registry_plain")(Plain)
    assert "test_registry_plain" not in registry.names("task")


def test_unknown_option_names_option_lists_options_and_suggests():
    with pytest.raises(RegistryError) as info:
        registry.build("objective", "subtb", lambda_=0.5)
    message = str(info.value)
    assert "objective 'subtb' has no option 'lambda_'" in message
    for option in ("lamda", "penalty", "huber_delta"):
        assert option in message
    assert "did you mean 'lamda'?" in message


def test_unknown_option_in_config_mapping():
    with pytest.raises(RegistryError, match="target 'alpha_power' has no option 'alfa'"):
        registry.build("target", "alpha_power", {"alfa": 2.0})


def test_bad_option_value_names_the_component():
    with pytest.raises(RegistryError) as info:
        registry.build("objective", "la_tb", eps_low=-0.1)
    message = str(info.value)
    assert "objective 'la_tb'" in message and "eps_low" in message


@pytest.mark.parametrize(
    "request_fn",
    [
        lambda: registry.lookup("widget", "tb"),
        lambda: registry.build("widget", "tb"),
        lambda: registry.names("widget"),
        lambda: registry.register("widget", "x"),
        lambda: registry.unregister("widget", "x"),
    ],
)
def test_bad_kind_lists_kinds(request_fn):
    with pytest.raises(RegistryError) as info:
        request_fn()
    message = str(info.value)
    assert "unknown component kind 'widget'" in message
    for kind in registry.KINDS:
        assert kind in message


# ---------------------------------------------------------------------------------------------
# Composition.


def components(target: str, objective: str, logz: str | None, **target_config):
    built = {
        "target": registry.build(
            "target", target, reward=lambda r: torch.zeros(r.batch_size), **target_config
        )
        if target == "reward_tilted"
        else registry.build("target", target, **target_config),
        "objective": registry.build("objective", objective),
    }
    if logz == "mlp":
        built["logz"] = registry.build("logz", "mlp", hidden_size=4, width=8)
    elif logz is not None:
        built["logz"] = registry.build("logz", logz)
    return built


@pytest.mark.parametrize(
    ("target", "objective", "logz", "target_config", "run_provides"),
    [
        ("alpha_power", "subtb", None, {}, ()),
        ("alpha_power", "db", None, {}, ()),
        ("alpha_power", "la_tb", "scalar", {}, ("exact_behaviour_logp",)),
        (
            "alpha_power",
            "la_tb",
            "table",
            {"format_penalty": -0.5},
            ("response_text", "exact_behaviour_logp"),
        ),
        ("alpha_power", "tb", "mlp", {}, ("prompt_hidden",)),
        ("reward_tilted", "tb_token", "scalar", {}, ()),
    ],
)
def test_valid_compositions_pass(target, objective, logz, target_config, run_provides):
    registry.check_composition(components(target, objective, logz, **target_config), run_provides)


def assert_composition_rejected(built, run_provides, role, label, need):
    with pytest.raises(RegistryError) as info:
        registry.check_composition(built, run_provides)
    message = str(info.value)
    assert f"{role} {label!r} requires {need!r}" in message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("objective", ["subtb", "db"])
def test_prefix_objective_with_end_only_target_is_rejected(objective):
    message = assert_composition_rejected(
        components("reward_tilted", objective, None), (), "objective", objective, "prefix_rewards"
    )
    assert "target='reward_tilted'" in message


def test_subtb_with_format_penalty_is_rejected():
    built = components("alpha_power", "subtb", None, format_penalty=-0.5)
    assert_composition_rejected(built, ("response_text",), "objective", "subtb", "prefix_rewards")


@pytest.mark.parametrize("objective", ["la_tb", "tb", "tb_token"])
def test_log_z_objective_without_log_z_is_rejected(objective):
    message = assert_composition_rejected(
        components("alpha_power", objective, None),
        ("exact_behaviour_logp",),
        "objective",
        objective,
        "log_z",
    )
    assert "logz 'scalar'" in message  # names the providers


def test_mlp_log_z_without_prompt_hidden_is_rejected():
    assert_composition_rejected(
        components("alpha_power", "la_tb", "mlp"),
        ("exact_behaviour_logp",),
        "logz",
        "mlp",
        "prompt_hidden",
    )


def test_format_penalty_without_response_text_is_rejected():
    assert_composition_rejected(
        components("alpha_power", "la_tb", "scalar", format_penalty=-0.5),
        (),
        "target",
        "alpha_power",
        "response_text",
    )


def test_run_facts_fill_the_options_a_component_declares() -> None:
    """A component names the run facts it needs (``run_fact``); composing a run fills them in when
    the config leaves them out, for any registered name — the trainer knows no component's
    options."""
    from gfnlm.training.compose import compose
    from gfnlm.training.config import load_config

    @attrs.frozen
    class NeedsFacts:
        provides = frozenset({"log_z"})
        width: int = registry.run_fact("hidden_size", default=0)
        rows: int = registry.run_fact("num_train_prompts", default=0)
        other: int = 7

    registry.register("logz", "test_registry_facts")(NeedsFacts)
    try:
        built = registry.build(
            "logz",
            "test_registry_facts",
            {"other": 1},
            run_facts={"hidden_size": 64, "num_train_prompts": 12},
        )
        assert (built.width, built.rows, built.other) == (64, 12, 1)
        given = registry.build(
            "logz", "test_registry_facts", {"rows": 3}, run_facts={"num_train_prompts": 12}
        )
        assert given.rows == 3  # the config's own value wins
        config = load_config(None, ["objective.name=tb", "logz.name=test_registry_facts"])
        assert compose(config, hidden_size=96, num_train_prompts=5).logz == NeedsFacts(96, 5, 7)
    finally:
        registry.unregister("logz", "test_registry_facts")


def test_every_option_of_every_registered_component_says_what_it_means() -> None:
    """The API reference shows each option's type, default and its one-line ``help`` (attrs field
    metadata, see ``registry.option``): none may be left without one."""
    missing = [
        f"{kind} {name}: {field.name}"
        for kind in registry.KINDS
        for name in registry.names(kind)
        for field in attrs.fields(registry.lookup(kind, name))
        if field.init and not field.metadata.get("help")
    ]
    assert not missing, "options without a help text:\n  " + "\n  ".join(missing)


# ------------------------------------------------------------------------------------------------
# Honest importance weights: exact_behaviour_logp


def test_power_mh_with_la_tb_is_rejected_naming_the_capability():
    built = components("alpha_power", "la_tb", "scalar")
    built["sampler"] = registry.build("sampler", "power_mh")
    message = assert_composition_rejected(built, (), "objective", "la_tb", "exact_behaviour_logp")
    assert "exact log-probability each rollout was sampled with" in message
    assert "sampler 'power_mh' withholds it" in message


@pytest.mark.parametrize(("top_p", "min_p"), [(0.9, 0.0), (0.5, 0.0), (1.0, 0.1)])
def test_sglang_with_top_p_or_min_p_and_grpo_is_rejected(top_p, min_p):
    sampler = registry.build(
        "sampler", "sglang", url="http://127.0.0.1:1", top_p=top_p, min_p=min_p
    )
    built = {
        "target": registry.build("target", "alpha_power"),
        "objective": registry.build("objective", "grpo"),
        "sampler": sampler,
    }
    message = assert_composition_rejected(built, (), "objective", "grpo", "exact_behaviour_logp")
    assert f"sampler 'sglang' withholds it: top_p={top_p:g}, min_p={min_p:g}" in message


@pytest.mark.parametrize("objective", ["la_tb", "grpo"])
def test_exact_samplers_are_accepted_by_importance_weighted_objectives(objective):
    exact = [
        registry.build("sampler", "hf"),
        registry.build("sampler", "hf", top_p=0.9),
        registry.build("sampler", "sglang", url="http://127.0.0.1:1", top_p=1.0),
    ]
    for sampler in exact:
        assert "exact_behaviour_logp" in registry.capabilities(sampler, "provides")
        built = components("alpha_power", objective, "scalar")
        registry.check_composition({**built, "sampler": sampler})


def test_samplers_provide_exact_behaviour_logp_only_when_true():
    assert "exact_behaviour_logp" not in registry.capabilities(
        registry.build("sampler", "power_mh"), "provides"
    )
    sglang = registry.build("sampler", "sglang", url="http://127.0.0.1:1", top_p=0.95)
    assert "exact_behaviour_logp" not in registry.capabilities(sglang, "provides")
    # TB-family objectives do not weight by behaviour_logp: any sampler will do.
    for name in ("tb", "subtb", "db", "tb_token"):
        assert "exact_behaviour_logp" not in registry.build("objective", name).requires


def test_exploration_needs_a_sampler_that_can_apply_it():
    built = components("alpha_power", "tb", "scalar")
    tempered = registry.build("exploration", "tempered", temperature=1.5)
    uniform = registry.build("exploration", "uniform_mix", epsilon=0.5)
    for exploration in (tempered, uniform):
        registry.check_composition(
            {**built, "exploration": exploration, "sampler": registry.build("sampler", "hf")}
        )
    sampler = registry.build("sampler", "hf", engine="generate")
    message = assert_composition_rejected(
        {**built, "exploration": tempered, "sampler": sampler},
        (),
        "exploration",
        "tempered",
        "tempered_sampling",
    )
    assert "engine='generate'" in message


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_a_server_sampler_explores_by_temperature_only_where_that_is_exact(engine: str):
    """A tempered exploration is the server's temperature times T where neither top-p nor min-p
    filters; a uniform mixture is never something a server draws from."""
    built = components("alpha_power", "tb", "scalar")
    tempered = registry.build("exploration", "tempered", temperature=1.5)
    unfiltered = registry.build("sampler", engine, url="http://127.0.0.1:1", temperature=0.8)
    registry.check_composition({**built, "exploration": tempered, "sampler": unfiltered})
    unfiltered.explore_with(tempered)
    assert unfiltered.draw_temperature == pytest.approx(0.8 * 1.5)
    nucleus = registry.build("sampler", engine, url="http://127.0.0.1:1", top_p=0.9)
    message = assert_composition_rejected(
        {**built, "exploration": tempered, "sampler": nucleus},
        (),
        "exploration",
        "tempered",
        "tempered_sampling",
    )
    assert "top_p=0.9" in message and "use top_p=1 and min_p=0" in message
    uniform = registry.build("exploration", "uniform_mix", epsilon=0.5)
    message = assert_composition_rejected(
        {**built, "exploration": uniform, "sampler": unfiltered},
        (),
        "exploration",
        "uniform_mix",
        "behaviour_transform",
    )
    assert "exploration.name=tempered" in message
    with pytest.raises(ConfigError, match=r"^exploration.name='uniform_mix': .* applies only a"):
        unfiltered.explore_with(uniform)
