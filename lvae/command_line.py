"""What an `lvae` command line asks for, read before anything heavy is imported: the subcommand, and whether the
command only prints (`--help`, `--print_config`). The entry point reads it to start the drawing process before
Lightning is imported; the CLI reads the same facts, so the two never disagree on them."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

PRINT_CONFIG = "--print_config"
HELP = ("-h", "--help")
DRAWING_SUBCOMMANDS = ("fit", "validate")  # the subcommands whose picture callbacks draw


@dataclass(frozen=True)
class CommandLine:
    """An `lvae` command line, as far as it can be read without the parser: `subcommand` is its first word (fit,
    validate, test, predict, explore), `help` and `print_config` whether it prints and exits before any work."""

    subcommand: Optional[str]
    help: bool
    print_config: bool

    @property
    def draws(self) -> bool:
        """Whether the command draws pictures: `fit` or `validate`, not asked only to print."""
        return self.subcommand in DRAWING_SUBCOMMANDS and not self.help and not self.print_config


def read_command_line(argv: Sequence[str]) -> CommandLine:
    """`argv` without the program name, e.g. `sys.argv[1:]`. `--print_config=skip_null` asks to print as well."""
    args = [str(arg) for arg in argv]
    return CommandLine(subcommand=args[0] if args else None, help=any(arg in HELP for arg in args),
                       print_config=any(arg.split("=", 1)[0] == PRINT_CONFIG for arg in args))
