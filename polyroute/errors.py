"""The one error hierarchy of polyroute.

Names end in ``Error``; the state machine's ``Retry``/``Catch`` clauses use these names, and
the CLI maps ``exit_code`` to its documented exit status (2 bad input, 3 budget or deadline,
1 anything else).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from polyroute.schema import Usage

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3


class PolyrouteError(Exception):
    """Base of every error polyroute raises on purpose."""

    exit_code = EXIT_FAILURE
    retryable = False


# --- bad input: exit 2 -----------------------------------------------------------------------


class InputError(PolyrouteError):
    """A user's file, flag or request is wrong; the message names what and where."""

    exit_code = EXIT_BAD_INPUT


class TaskFileError(InputError):
    """A task file cannot be read or does not match the schema."""


class ConfigError(InputError):
    """A registry, routing policy or prices file is malformed."""


class UnknownModelError(InputError):
    """A model id is not in the registry."""


class PlanValidationError(InputError):
    """A plan is invalid: duplicate ids, unknown dependencies, too many steps."""


class CycleError(PlanValidationError):
    """A plan's dependencies form a cycle; the message names it, ``cycle: a -> b -> a``."""


class PinnedModelError(InputError):
    """A step pins a model that cannot take it (capability, window, lifecycle)."""


class RoutingDataError(InputError):
    """Routing outcome data (CSV folders) is missing or malformed."""


# --- stopped by a limit: exit 3 --------------------------------------------------------------


class LimitError(PolyrouteError):
    """A run was stopped by one of its budgets or its deadline."""

    exit_code = EXIT_STOPPED


class BudgetExceededError(LimitError):
    """No eligible model fits what is left of the token, dollar or step budget."""


class DeadlineExceededError(LimitError):
    """The run's deadline passed before the step could start or finish."""


# --- routing and planning --------------------------------------------------------------------


class NoEligibleModelError(PolyrouteError):
    """No model in the registry has the capabilities and window a step needs."""


class ClassificationError(PolyrouteError):
    """The classification model did not return valid classification JSON."""


class PlanningError(PolyrouteError):
    """The planning model did not return a valid plan, even after one repair attempt."""


# --- providers -------------------------------------------------------------------------------


class ProviderError(PolyrouteError):
    """A model provider call failed."""

    usage: Usage | None = None
    """Tokens the provider billed for the failed call(s): a refused, cut-off or invalid answer
    still costs what it read and wrote. None when nothing was billed (an HTTP error)."""

    attempts: int = 1
    """Calls made on the model before this error was raised (an answer and its repair: 2)."""

    def billed(self, usage: Usage) -> Self:
        """This error, with ``usage`` added to what the failed call(s) were billed."""
        if usage.total:
            self.usage = usage if self.usage is None else self.usage + usage
        return self


class RateLimitedError(ProviderError):
    """HTTP 429: retried after the provider's ``retry-after``."""

    retryable = True

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OverloadedError(ProviderError):
    """HTTP 529 / ``overloaded_error``."""

    retryable = True


class CircuitOpenError(OverloadedError):
    """The model's circuit is open: it is routed around without a call. Not retried on the
    same model (the state machine's ``Retry`` does not name it); the step falls back."""


class ProviderServerError(ProviderError):
    """HTTP 500, 502, 503, or a connection reset."""

    retryable = True


class ProviderTimeoutError(ProviderError):
    """The provider did not answer in time."""

    retryable = True


class InvalidRequestError(ProviderError):
    """HTTP 400: the request itself is wrong; not retried."""


class AuthenticationError(ProviderError):
    """HTTP 401/403: missing or wrong credentials; not retried."""


class ContentRefusedError(ProviderError):
    """The model refused the content; not retried, no silent fallback."""


class OutputTruncatedError(ProviderError):
    """The answer was cut off by ``max_tokens`` or was not the JSON that was asked for."""


class SpillIntegrityError(PolyrouteError):
    """A spilled payload read back does not match its recorded sha256 or size."""


RETRYABLE_ERRORS: tuple[type[ProviderError], ...] = (
    RateLimitedError,
    OverloadedError,
    ProviderServerError,
    ProviderTimeoutError,
)


def all_error_names() -> set[str]:
    """Every error class name defined here (the ASL's Retry/Catch may use only these)."""
    names: set[str] = set()
    stack: list[type[BaseException]] = [PolyrouteError]
    while stack:
        cls = stack.pop()
        names.add(cls.__name__)
        stack.extend(cls.__subclasses__())
    return names
