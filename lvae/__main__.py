"""`python -m lvae` and the `lvae` command. The CLI is imported inside `main`, once the `EarlyDrawing` has started:
the drawing process's imports then run while Lightning's import takes the other core. SIGTERM and Ctrl-C are lvae's
from the first line: while Lightning imports, either ends the command with one line and the shell's exit code."""


def main() -> None:
    import sys

    from lvae.command_line import read_command_line
    from lvae.signals import SIGINT_EXIT, EntrySignals

    command = read_command_line(sys.argv[1:])
    with EntrySignals():
        if command.subcommand == "explore":  # writes a page from kept files: no Lightning, no drawing process
            from lvae.explore import main as explore_main

            sys.exit(explore_main(sys.argv[2:]))
        try:
            from lvae.drawing import EarlyDrawing
            from lvae.figures import DRAWING_STACK

            # Its imports run on the core that Lightning's import leaves idle; stopped on leaving, if no fit took it.
            with EarlyDrawing(command, DRAWING_STACK):
                from lvae.cli import main as cli_main

                cli_main()
        except KeyboardInterrupt:  # while Lightning imports (the CLI answers its own)
            print("lvae: stopped by Ctrl-C", file=sys.stderr)
            sys.exit(SIGINT_EXIT)


if __name__ == "__main__":
    main()
