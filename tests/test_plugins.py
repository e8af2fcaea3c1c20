"""Components of your own from the command line: --import, a config's imports, and an installed
package's gfnlm.components entry point (a real dist-info on the path, found by importlib.metadata);
re-registering the same class is not an error."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest
from test_trainer import REPO

from gfnlm.contracts import registry
from gfnlm.contracts.registry import RegistryError
from gfnlm.training.compose import compose
from gfnlm.training.config import load_config

PLUGIN = textwrap.dedent('''
    import attrs
    from gfnlm.contracts.registry import register
    from gfnlm.targets.base import Target
    from gfnlm.contracts.types import TargetScores

    @register("target", "{name}")
    @attrs.frozen
    class Constant(Target):
        """R = exp(value): a plugin's target."""
        value: float = 0.0
        needs_base = False

        def score(self, rollouts, base):
            return TargetScores(
                log_reward=rollouts.behaviour_logp.new_full((rollouts.batch_size,), self.value)
            )
''')


def write_module(folder: Path, module: str, target_name: str) -> None:
    package = folder / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN.replace("{name}", target_name))


def install_plugin(site: Path, module: str, target_name: str) -> None:
    """A package as pip installs it: the module and a dist-info with the entry point."""
    write_module(site, module, target_name)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[gfnlm.components]\n{module} = {module}\n")


@pytest.fixture
def compose_in_subprocess(tiny_model_dir: Path, tmp_path: Path):
    """``gfnlm train CONFIG --quiet ARGS`` up to composing the run, in a fresh interpreter (so entry
    points and imports are found as a user's run finds them). ``train.out_dir`` is a file on
    purpose: that check comes right after the components are built, so the run stops there."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")

    def run(config: Path, extra_path: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "gfnlm.cli",
                "train",
                str(config),
                "--quiet",
                f"model.path={tiny_model_dir}",
                f"train.out_dir={blocker}",
                *args,
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(extra_path)},
        )

    return run


COMPOSED = "train.out_dir="  # the first check after the components are built


def test_an_installed_package_is_found_by_its_entry_point(
    tmp_path: Path, compose_in_subprocess
) -> None:
    site = tmp_path / "site"
    install_plugin(site, "gfnlm_test_plugin", "plugin_constant")
    config = tmp_path / "run.yaml"
    config.write_text(
        "target: {name: plugin_constant, options: {value: 1.5}}\nobjective: {name: tb}\n"
    )
    found = compose_in_subprocess(config, site)
    assert "unknown target" not in found.stderr and COMPOSED in found.stderr, found.stderr
    missing = compose_in_subprocess(config, tmp_path / "empty")
    assert missing.returncode == 2 and "unknown target 'plugin_constant'" in missing.stderr
    assert (
        "--import your.module" in missing.stderr
        and "'gfnlm.components' entry point" in missing.stderr
    )


@pytest.mark.parametrize("how", ["--import", "yaml"])
def test_a_module_of_your_own_is_imported_by_flag_or_config(
    how: str, tmp_path: Path, compose_in_subprocess
) -> None:
    write_module(tmp_path / "code", "my_components_mod", "my_constant")
    config = tmp_path / "run.yaml"
    text = "target: {name: my_constant}\nobjective: {name: tb}\n"
    config.write_text(text + ("imports: [my_components_mod]\n" if how == "yaml" else ""))
    args = ["--import", "my_components_mod"] if how == "--import" else []
    result = compose_in_subprocess(config, tmp_path / "code", *args)
    assert COMPOSED in result.stderr, result.stderr


def test_an_import_that_fails_is_one_line(tmp_path: Path) -> None:
    config = load_config(None, ["imports=[no_such_module_anywhere]"])
    with pytest.raises(RegistryError, match=r"imports='no_such_module_anywhere': cannot import it"):
        compose(config, hidden_size=8, num_train_prompts=2)


def test_registering_the_same_class_again_replaces_it_and_another_class_is_refused() -> None:
    name = "test_plugins_rerun_cell"

    def define(
        value: int,
    ) -> type:  # the same module and qualified name each time, like a cell run again
        @attrs.frozen
        class Cell:
            x: int = value

        return Cell

    try:
        registry.register("task", name)(define(1))
        registry.register("task", name)(define(2))  # no error: the new definition wins
        assert registry.build("task", name).x == 2

        @attrs.frozen
        class Other:
            x: int = 3

        with pytest.raises(RegistryError, match="already registered"):
            registry.register("task", name)(Other)
    finally:
        registry.unregister("task", name)
