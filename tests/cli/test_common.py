"""Every command's parser: help text and default for every option, `--help` that exits 0, unknown flags exit 2."""

import argparse

import pytest
from sdm.cli import (bench, calibrate, compare, convert, export, finetune, neuron_table, reference_stats, source_models,
                     sweep)

PARSERS = {"sdm-convert": convert.build_parser, "sdm-calibrate": calibrate.build_parser,
           "sdm-export": export.build_parser, "sdm-finetune": finetune.build_parser, "sdm-train": source_models.build_parser,
           "compare.py": compare.build_parser, "sweep.py": sweep.build_parser, "bench.py": bench.build_parser,
           "reference_stats": reference_stats.build_parser, "neuron_table.py": neuron_table.build_parser}
MAINS = [convert.main, calibrate.main, export.main, finetune.main, source_models.train_main, compare.main, sweep.main, bench.main,
         reference_stats.main, neuron_table.main, source_models.zoo_main]


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help_and_shows_its_default(name):
    for parser in _all_parsers(PARSERS[name]()):
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.option_strings}: no help text"
            shown = parser._get_formatter()._format_action(action)
            if not any(action.default is v for v in (None, False, argparse.SUPPRESS)) and not action.required:
                assert f"(default:{action.default})".replace(" ", "") in "".join(shown.split()), \
                    f"{name} {action.option_strings}: default not shown"
        assert "%(default)" not in text


@pytest.mark.parametrize("main", MAINS, ids=lambda m: m.__module__)
def test_help_exits_zero_and_unknown_flags_exit_two(main, capsys):
    for flag in ("--help", "-h"):
        with pytest.raises(SystemExit) as done:
            main([flag])
        assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["--no-such-flag"])
    assert done.value.code == 2


def test_zoo_prints_the_table_without_options(capsys):
    assert source_models.zoo_main([]) == 0
    assert "| ddpm-cifar10-ch64 |" in capsys.readouterr().out
