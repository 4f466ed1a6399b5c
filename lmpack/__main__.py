"""`python -m lmpack` and the `lmpack` command: the command line, quiet on Ctrl-C from the start.

Importing the CLI (typer, rich) takes a while; a Ctrl-C or SIGTERM in that time has nothing to
clean up, so it ends the process with one line instead of a KeyboardInterrupt traceback. Once a
command runs, lmpack.cli takes the signals over and unwinds (removing temp files) instead.
"""
import os
import signal


def _exit_now(signum, frame):
    os.write(2, b"interrupted\n" if signum == signal.SIGINT else b"terminated\n")
    os._exit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGINT, _exit_now)
    signal.signal(signal.SIGTERM, _exit_now)
    from lmpack.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
