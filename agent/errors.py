"""The agent's exceptions: each carries a message that is safe to print (no secrets)."""


class AgentError(Exception):
    """Base class; `exit_code` is what the CLI exits with when this ends a command."""

    exit_code = 1


class ConfigError(AgentError):
    """The configuration is unusable; `problems` holds one line per problem."""

    exit_code = 2

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class GitError(AgentError):
    """A git command failed; the message names the command and a tail of its stderr."""

    def __init__(self, message, returncode=None, stderr=""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class CheckoutError(AgentError):
    """The local path cannot be synced (not a checkout, another repository, ...)."""


class LockedError(AgentError):
    """Another process or thread holds a lock we need."""


class ForgeError(AgentError):
    """The forge could not tell us the branch head."""

    transient = False


class ForgeUnavailableError(ForgeError):
    """Connection failure, timeout or a 5xx answer: worth retrying (a timeout only at the next check)."""

    transient = True

    def __init__(self, message, timed_out=False):
        super().__init__(message)
        self.timed_out = timed_out


class NotFoundError(ForgeError):
    """The repository or branch does not exist on the forge (or the token cannot see it)."""


class AuthError(ForgeError):
    """The forge refused our credentials."""


class BadAnswerError(ForgeError):
    """The forge answered something we cannot read."""


class RateLimitedError(ForgeError):
    """The forge asked us to wait until `until` (epoch seconds)."""

    def __init__(self, message, until):
        super().__init__(message)
        self.until = until
