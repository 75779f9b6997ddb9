"""Library errors name Python arguments; the command line tells them in its own flags."""

from triptych.cli import as_cli_flags


def test_a_python_argument_is_told_as_the_commands_flag() -> None:
    argv = ["triptych", "pdcr", "explain", "--target-class", "5"]
    msg = "target_class=5 is outside 0..1: the model has 2 output channels"
    assert as_cli_flags(msg, argv) == "--target-class 5 is outside 0..1: the model has 2 output channels"


def test_an_already_named_flag_is_not_repeated() -> None:
    argv = ["triptych", "pdcr", "explain"]
    msg = "activation='tanh' (--activation): state the network's output"
    assert as_cli_flags(msg, argv) == "--activation 'tanh': state the network's output"


def test_messages_are_left_alone_where_the_command_has_no_such_flag() -> None:
    msg = "target_class=5 is outside 0..1"
    assert as_cli_flags(msg, ["triptych", "m3jepa", "search"]) == msg
    assert as_cli_flags("a bad file: x.csv", ["triptych", "pdcr", "explain"]) == "a bad file: x.csv"
