"""`python -m lvae` and the `lvae` command. The CLI is imported inside `main`, after `start_early`: the drawing
process's imports then run while Lightning's import takes the other core."""


def main() -> None:
    import sys

    from lvae.drawing import start_early

    start_early(sys.argv[1:])  # its imports run on the core that Lightning's import leaves idle
    from lvae.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
