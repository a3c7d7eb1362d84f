"""Plug-ins: components registered from a module outside the package, used through the CLI."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyrovae.components.guides import GUIDES
from pyrovae.components.likelihoods import LIKELIHOODS
from pyrovae.components.priors import PRIORS
from pyrovae.runs.cli import main
from pyrovae.runs.plugins import load_plugin, plugins_in_argv

FAST = ["--epochs", "1", "--hidden", "16", "--batch-size", "100", "--quiet"]
PLUGIN = textwrap.dedent('''
    """A user's own components, registered on import."""
    import pyro.distributions as dist

    from pyrovae import GUIDES, LIKELIHOODS, PRIORS, DiagonalGuide, Likelihood, Prior


    @PRIORS.register("plugin_student_t")
    class StudentT(Prior):
        def forward(self, batch_shape=()):
            return dist.StudentT(4.0, 0.0, 1.0).expand((self.z_dim,)).to_event(1) \\
                .expand(batch_shape)


    @LIKELIHOODS.register("plugin_cauchy")
    class Cauchy(Likelihood):
        def distribution(self, loc):
            return dist.Cauchy(loc, 0.05)


    GUIDES.register("plugin_diagonal", DiagonalGuide)
''')


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder holding ``my_components.py``, as the current folder; afterwards the registries,
    ``sys.modules`` and ``sys.path`` are as they were."""
    (tmp_path / "my_components.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = {registry: set(registry.names()) for registry in (PRIORS, LIKELIHOODS, GUIDES)}
    yield tmp_path
    for registry, names in before.items():
        for name in set(registry.names()) - names:
            registry.unregister(name)
    sys.modules.pop("my_components", None)


def console(*args, cwd):
    """``pyrovae ARGS`` as the installed console script (its folder, not cwd, on sys.path)."""
    script = Path(sys.executable).with_name("pyrovae")
    return subprocess.run([str(script), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_a_plugin_outside_the_package_trains_through_the_cli(plugin_dir):
    result = console("train", "--plugin", "my_components", "--prior", "plugin_student_t",
                     "--likelihood", "plugin_cauchy", "--guide", "plugin_diagonal",
                     "--out", "run", *FAST, cwd=plugin_dir)
    assert result.returncode == 0, result.stderr
    assert "trained 1 epochs" in result.stdout
    config = json.loads((plugin_dir / "run" / "config.json").read_text())
    assert config["plugin"] == ["my_components"] and config["prior"] == "plugin_student_t"
    # load_run (here through `pyrovae sample`, in this process) imports the run's plug-in
    assert "plugin_student_t" not in PRIORS
    assert main(["sample", "run", "-n", "4", "--out", "s.png"]) == 0
    assert (plugin_dir / "s.png").is_file() and "plugin_student_t" in PRIORS


def test_help_lists_the_plugins_names(plugin_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--plugin", str(plugin_dir / "my_components.py"), "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "plugin_student_t" in out and "plugin_cauchy" in out and "plugin_diagonal" in out


@pytest.mark.parametrize("source,plugin,message", [
    (None, "no_such_plugin_xyz", "plugin 'no_such_plugin_xyz' not found: no module of that "
                                 "name on sys.path or in the current folder"),
    (None, "missing.py", "plugin 'missing.py' not found: no such file"),
    ("import no_such_dependency_xyz\n", "needs_dep", "plugin 'needs_dep' failed to import: No "
                                                     "module named 'no_such_dependency_xyz'"),
    ("from pyrovae import LIKELIHOODS, Likelihood\nLIKELIHOODS.register('gaussian', "
     "Likelihood)\n", "clash", "likelihood 'gaussian' is already registered"),
])
def test_a_bad_plugin_is_one_line_and_exit_2(plugin_dir, capsys, source, plugin, message):
    if source is not None:
        (plugin_dir / f"{plugin}.py").write_text(source)
    assert main(["train", "--plugin", plugin, "--out", "r", *FAST]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (plugin_dir / "r").exists()
    sys.modules.pop(plugin, None)


def test_a_plugin_is_imported_once(plugin_dir):
    first = load_plugin("my_components")
    assert load_plugin("my_components") is first
    assert load_plugin(str(plugin_dir / "my_components.py")) is first  # same file: reused


def test_plugins_are_read_from_the_command_line_before_parsing():
    argv = ["train", "--plugin", "a", "b.py", "--epochs", "1", "--plugin=c", "--quiet"]
    assert plugins_in_argv(argv) == ["a", "b.py", "c"]
    assert plugins_in_argv(["train", "--epochs", "1"]) == []
