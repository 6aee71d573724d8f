"""Which leading words of a changing hypothesis will not change any more.

Local agreement (as in whisper_streaming): a word is confirmed once two consecutive
hypotheses of the same growing utterance agree on it and on everything before it. The last
word of a hypothesis is never confirmed by agreement alone: it may be cut off mid-word by the
end of the audio decoded so far. Confirmed words only ever grow, and are fed back to the model
as a forced prefix, so later hypotheses keep them and the model spends no time on them again.
"""

from __future__ import annotations

from collections.abc import Sequence

from decoder.api import Word, join_words


def common_prefix_length(a: Sequence[Word], b: Sequence[Word]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x.tokens != y.tokens:
            break
        n += 1
    return n


class Stabilizer:
    def __init__(self, holdback: int = 2) -> None:
        self.holdback = holdback
        self.confirmed: tuple[Word, ...] = ()
        self._previous: tuple[Word, ...] | None = None

    def update(self, words: Sequence[Word]) -> tuple[Word, ...]:
        """Take a new hypothesis; return its words with the confirmed ones first, as shown."""
        words = tuple(words)
        if words[: len(self.confirmed)] != self.confirmed:
            # A hypothesis decoded without the forced prefix disagrees with what was
            # confirmed: what was shown as stable stays, the rest follows it.
            words = self.confirmed + words[common_prefix_length(self.confirmed, words) :]
        if self._previous is not None:
            agreed = common_prefix_length(self._previous, words)
            agreed = min(agreed, len(self._previous) - 1, len(words) - self.holdback)
            if agreed > len(self.confirmed):
                self.confirmed = words[:agreed]
        self._previous = words
        return words

    @property
    def latest(self) -> tuple[Word, ...]:
        """The newest hypothesis as shown (confirmed words first)."""
        return self._previous or ()

    @property
    def confirmed_text(self) -> str:
        return join_words(self.confirmed)
