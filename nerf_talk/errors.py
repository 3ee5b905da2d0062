"""Errors that reach the user: each names the problem and what to do about it."""


class UserError(Exception):
    """A problem with the user's input or environment. The CLI prints it and exits with status 2.

    `problem` says what is wrong (with the bad value); `hint` says what to do.
    """

    def __init__(self, problem: str, hint: str = ""):
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem}\n  -> {hint}" if hint else problem)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM reached the program. The CLI exits with 128 + `signum` (130, 143), as a shell does
    for a process that the signal ended. `kept` says what was saved (e.g. the checkpoint training wrote)."""

    def __init__(self, signum: int, kept: str = ""):
        self.signum = signum
        self.kept = kept
        super().__init__(kept or f"signal {signum}")
