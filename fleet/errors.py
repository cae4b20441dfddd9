"""The few exception types the host code raises, each carrying its data."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Position:
    """Where something stands in a text file: 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file, printed as `FILE:LINE:COL: path.to.key: message`."""

    pos: Position
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.pos}: {self.path}: {self.message}" if self.path else f"{self.pos}: {self.message}"


@dataclass
class ConfigError(Exception):
    """A configuration (device file, hub.hjson, …) was refused; `issues` lists every problem found."""

    issues: list[ConfigIssue] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)


@dataclass
class BrokerError(Exception):
    """A broker could not be started or reached."""

    url: str
    reason: str

    def __str__(self) -> str:
        return f"{self.url}: {self.reason}"


def did_you_mean(word: str, choices: list[str] | set[str] | tuple[str, ...]) -> str:
    """A ` (did you mean X?)` suffix for a near miss among `choices`, else an empty string."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
