"""User-facing errors: one line that names the problem and the fix; the CLI turns them into exit code 2."""


class MemauditError(Exception):
    """A problem with the user's input or environment (not a bug).

    The message is one line: what is wrong, then what to do about it.
    """

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.rstrip(". ")
        self.fix = fix
        super().__init__(self.problem + (f"; fix: {fix}" if fix else ""))


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped a run: ``code`` is the exit status (128 + signal), ``kept`` says what survives."""

    def __init__(self, signum: int, kept: str):
        self.code = 128 + signum
        self.kept = kept
        super().__init__(f"interrupted ({'SIGINT' if signum == 2 else 'SIGTERM' if signum == 15 else signum}): {kept}")
