"""Errors that reach the user: each names the problem and what to do about it."""


class UserError(Exception):
    """A problem with the user's input or environment. The CLI prints it and exits with status 2.

    `problem` says what is wrong (with the bad value); `hint` says what to do.
    """

    def __init__(self, problem: str, hint: str = ""):
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem}\n  -> {hint}" if hint else problem)
