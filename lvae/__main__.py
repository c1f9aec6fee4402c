"""`python -m lvae` and the `lvae` command. The CLI is imported inside `main`, after `start_early`: the drawing
process's imports then run while Lightning's import takes the other core. SIGTERM and Ctrl-C are lvae's from the
first line: while Lightning imports, either ends the command with one line and the shell's exit code."""


def main() -> None:
    import sys

    from lvae.signals import SIGINT_EXIT, EntrySignals

    with EntrySignals():
        if sys.argv[1:2] == ["explore"]:  # writes a page from kept files: no Lightning, no drawing process
            from lvae.explore import main as explore_main

            sys.exit(explore_main(sys.argv[2:]))
        try:
            from lvae.drawing import start_early

            start_early(sys.argv[1:])  # its imports run on the core that Lightning's import leaves idle
            from lvae.cli import main as cli_main
        except KeyboardInterrupt:
            print("lvae: stopped by Ctrl-C", file=sys.stderr)
            sys.exit(SIGINT_EXIT)
        cli_main()


if __name__ == "__main__":
    main()
