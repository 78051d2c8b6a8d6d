"""User-facing errors: one line that names the problem and the fix; the CLI turns them into exit code 2."""


class MemauditError(Exception):
    """A problem with the user's input or environment (not a bug).

    The message is one line: what is wrong, then what to do about it.
    """

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.rstrip(". ")
        self.fix = fix
        super().__init__(self.problem + (f"; fix: {fix}" if fix else ""))
