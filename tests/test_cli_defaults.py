"""One place per default: every CLI option that is a setting maps to a config field
(``cli.OPTION_FIELDS``) and shows that field's default; anything else is named below."""

from typing import Annotated, Any

import pytest
import typer

from lensfinder.cli import OPTION_FIELDS, Settings, app, default_text, field_default
from lensfinder.config import SimulateConfig

# Options that are not settings (no config field): what to read or write, and run modes.
NOT_SETTINGS = {"model", "data", "out", "config", "no_resume", "overwrite"}
NOT_SETTINGS_OF: dict[tuple[str, str], str] = {
    ("scan", "scheduler"): "where the scan runs (a Dask address), not how it scores",
    ("inspect", "token"): "a secret: never written to a config file",
    ("inspect", "lead_token"): "a secret: never written to a config file",
    ("grades export", "scan"): "what to read: the scan whose scores are the priors",
    ("demo", "quick"): "picks the tiny demo (demo.QUICK) instead of DemoConfig",
    ("export", "onnx"): "the output file",
    ("cutouts", "tiles"): "what to read: the directory of mosaic tiles",
    ("cutouts", "catalog"): "what to read: the catalogue of objects",
    ("scan", "tiles"): "what to read: the directory of mosaic tiles",
    ("scan", "catalog"): "what to read: the catalogue of objects",
    ("reproduce table1", "budget"): "names a Table1Budget (config.TABLE1_BUDGETS)",
    ("reproduce table1", "rows"): "which of the paper's rows to run",
}


def leaf_commands(command: Any, path: str = "") -> list[tuple[str, Any]]:
    """``(command path, click command)`` of every verb under a click group."""
    children = getattr(command, "commands", None)
    if children is None:
        return [(path, command)]
    return [
        leaf
        for name, child in sorted(children.items())
        for leaf in leaf_commands(child, f"{path} {name}".strip())
    ]


def shown_default(option: Any) -> str | None:
    """What ``--help`` shows as the option's default (None: nothing)."""
    if isinstance(option.show_default, str):
        return option.show_default
    if option.show_default and option.default is not None:
        return default_text(option.default)
    return None


def option_problems(
    cli: typer.Typer,
    table: dict[str, Settings],
    not_settings: set[str] = NOT_SETTINGS,
    not_settings_of: dict[tuple[str, str], str] = NOT_SETTINGS_OF,
) -> list[str]:
    """Options that map to no config field or show another default than their field's, and
    table entries that name no option of their verb or no field of their config."""
    problems = []
    verbs = dict(leaf_commands(typer.main.get_command(cli)))
    for path, command in verbs.items():
        settings = table.get(path)
        for option in command.params:
            name = option.name
            if option.param_type_name != "option" or name in not_settings:
                continue
            if (path, name) in not_settings_of:
                continue
            if settings is None or name not in settings.fields:
                problems.append(f"{path} --{name}: maps to no config field")
                continue
            try:
                default = field_default(settings.cls, settings.fields[name])
            except AttributeError:
                continue  # reported below
            expected = None if default is None else default_text(default)
            if shown_default(option) != expected:
                problems.append(
                    f"{path} --{name}: shows {shown_default(option)!r}, "
                    f"{settings.cls.__name__}.{settings.fields[name]} is {expected!r}"
                )
    for path, settings in table.items():
        names = {o.name for o in verbs[path].params} if path in verbs else set()
        for name, dotted in settings.fields.items():
            if name not in names:
                problems.append(f"{path}: OPTION_FIELDS names --{name}, which it does not have")
            try:
                field_default(settings.cls, dotted)
            except AttributeError:
                problems.append(f"{path} --{name}: {settings.cls.__name__} has no field {dotted}")
    return problems


def test_every_option_is_a_config_field_and_shows_its_default():
    assert option_problems(app, OPTION_FIELDS) == []


def test_every_verb_with_a_config_is_in_the_table():
    """A verb that takes --config has its class in the table (so its flags are checked)."""
    verbs = dict(leaf_commands(typer.main.get_command(app)))
    with_config = {path for path, c in verbs.items() if "config" in {o.name for o in c.params}}
    assert with_config == set(OPTION_FIELDS)


def test_planted_drift_is_caught():
    """A fake CLI: an option whose shown default differs from its field, one that maps to no
    field, and a table entry naming an option the verb lacks are each reported."""
    fake = typer.Typer()

    @fake.callback()
    def main() -> None:
        """A group, so commands keep their names."""

    @fake.command()
    def run(
        n: Annotated[int | None, typer.Option(show_default="7")] = None,
        seed: Annotated[int | None, typer.Option(show_default="0")] = None,
        extra: Annotated[int | None, typer.Option()] = None,
    ) -> None:
        """Stands in for a verb."""

    table = {"run": Settings(SimulateConfig, {"n": "n", "seed": "seed", "workers": "workers"})}
    problems = option_problems(fake, table)
    assert problems == [
        f"run --n: shows '7', SimulateConfig.n is '{SimulateConfig().n}'",
        "run --extra: maps to no config field",
        "run: OPTION_FIELDS names --workers, which it does not have",
    ]
    table["run"].fields["n"] = "no_such_field"
    assert "run --n: SimulateConfig has no field no_such_field" in option_problems(fake, table)


@pytest.mark.parametrize(("value", "text"), [((1, 2, 4), "1,2,4"), (None, "None"), (0.5, "0.5")])
def test_default_text(value, text):
    assert default_text(value) == text
