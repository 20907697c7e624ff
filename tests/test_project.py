"""The project keeps its promises: README, CI and docstrings agree with the code."""
import inspect
import pathlib
import re

import keras_ddpm
from keras_ddpm import callbacks, cli, data, distribute, plotting, sampling, saving, schedule

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^.*python -m pytest.*$", readme, flags=re.MULTILINE)
    assert commands, "README.md must give the test command"
    return commands[0].split("&&")[-1].strip()


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_test_command() in ci_lines


def test_console_script_points_at_cli_main():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'keras-ddpm = "keras_ddpm_cli:main"' in pyproject
    import keras_ddpm_cli

    assert callable(keras_ddpm_cli.main) and callable(cli.main)


def public_objects():
    for module in (keras_ddpm, data, plotting, sampling, schedule, cli, saving, distribute, callbacks):
        names = getattr(module, "__all__", None) or [
            name for name, obj in vars(module).items()
            if not name.startswith("_") and inspect.getmodule(obj) is module
            and (inspect.isfunction(obj) or inspect.isclass(obj))
        ]
        for name in names:
            yield f"{module.__name__}.{name}", getattr(module, name)


def test_every_public_function_and_class_has_a_docstring_with_an_example():
    missing = [name for name, obj in public_objects()
               if "Example" not in (inspect.getdoc(obj) or "")]
    assert not missing, f"no docstring example: {missing}"
