"""Texts: English and pseudo-word vocabularies per language, split into disjoint halves."""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator
from functools import cache

import numpy as np

from wav2small.synth.constants import LANGUAGES, OOD_LANGUAGES

# --- texts ----------------------------------------------------------------------------------
_EN_WORDS = {
    "noun": """table window paper garden river kettle pencil ladder bottle blanket basket bridge
        bucket button candle carpet chair clock cloud corner cottage curtain desk door drawer
        engine fence field folder forest garage gate hammer harbour hill jacket key kitchen lamp
        lane letter map market meadow mirror mountain needle notebook orchard painting parcel path
        pillow plate pocket pond road roof saucer shelf shoe spoon staircase station stone street
        suitcase teapot ticket towel tower train tray tunnel umbrella valley village wagon wall
        wheel yard cabinet ribbon barrel compass lantern platform sofa mailbox printer cushion
        library factory ferry island canal chimney""",
    "adj": """small large wooden metal narrow wide round square old new plain heavy light long
        short tall flat thin thick empty full open closed blue green grey brown yellow white black
        red plastic northern southern eastern western upper lower middle second third usual
        common simple ordinary distant nearby local public striped folded painted""",
    "vt": """opened closed carried checked counted lifted placed cleaned measured found held
        brought took kept passed pulled pushed fixed packed sorted wrapped filled emptied marked
        shifted covered crossed reached watched noted copied printed labelled stacked stored
        moved""",
    "vi": """stood waited stayed rested remained sat leaned appeared stopped started returned
        arrived turned paused lingered""",
    "name": """Anna Ben Clara David Elena Frank Greta Hugo Ida Jonas Karl Lena Martin Nora Oscar
        Paula Quinn Rosa Simon Tara Ulrich Vera Walter Xenia Yusuf Zoe Alan Beth Carl Dora Emil
        Fiona Gustav Hanna Igor Julia Kevin Laura Milo Nina""",
    "day": "monday tuesday wednesday thursday friday saturday sunday",
    "month": """january february march april may june july august september october november
        december""",
    "time": "morning evening afternoon winter summer spring autumn",
}
_EN_PREP = ("near", "behind", "beside", "under", "above", "past", "along", "inside", "outside",
            "across", "by")  # fmt: skip
#: Function words shared by both vocabulary halves.
FUNCTION_WORDS = frozenset(("the", "a", "and", "on", "in", *_EN_PREP))
_EN_TEMPLATES = (
    "the {adj} {noun} {vi} {prep} the {noun}",
    "{name} {vt} the {adj} {noun}",
    "{name} {vt} a {noun} on {day}",
    "a {adj} {noun} {vi} {prep} the {noun} in {month}",
    "the {noun} {vi} {prep} the {adj} {noun}",
    "{name} and {name} {vt} the {noun}",
    "the {noun} and the {noun} {vi} {prep} the {noun}",
    "{name} {vi} {prep} the {noun} in the {time}",
)
# Pseudo-word phonotactics per language: onsets, nuclei, codas.
_PSEUDO = {
    "de": ("b d f g h k l m n p r s t w sch st br gr kl pf z", "a e i o u ä ö ü ei au",
           "n r l t s ch ng m"),
    "es": ("b c d f g l m n p r s t v ch ll br pl", "a e i o u", "n s l r"),
    "fr": ("b d f g j l m n p r s t v ch gr pl", "a e i o u ou eu on an é", "l r s"),
    "it": ("b c d f g l m n p r s t v z gl sc tr", "a e i o u", "n l r"),
    "nl": ("b d f g h k l m n p r s t v w z sch gr", "a e i o u aa ee oo ij ui oe",
           "n k t s l r m"),
    "pt": ("b c d f g l m n p r s t v ch lh nh", "a e i o u ão é ê", "s r m l"),
    "pl": ("b d g k m n p r s t w z sz cz ch dz pr kr st", "a e i o u y ą ę ó", "k m n s sz ł j"),
    "sv": ("b d f g h j k l m n p r s t v sk st tr bl", "a e i o u y å ä ö", "n k t s l r m g"),
}  # fmt: skip
_PSEUDO_LEXICON_SIZE = 400
_VOWEL_GROUPS = re.compile(r"[aeiouyäöüåéèêąęóãõ]+")


def _half(word: str) -> int:
    """Vocabulary half of a word: a hash of its spelling, so the same string lands in the same
    half in every language and the halves are disjoint by construction."""
    return zlib.crc32(word.encode("utf-8")) % 2


def _split_halves(words: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    items = tuple(dict.fromkeys(words))
    return tuple(w for w in items if _half(w) == 0), tuple(w for w in items if _half(w) == 1)


@cache
def _english_halves() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    return {slot: _split_halves(words.lower().split()) for slot, words in _EN_WORDS.items()}


@cache
def _pseudo_halves(language: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    onsets, nuclei, codas = (s.split() for s in _PSEUDO[language])
    codas = ["", "", *codas]  # open syllables twice as likely
    rng = np.random.default_rng([zlib.crc32(language.encode()), 11])
    words: dict[str, None] = {}
    while len(words) < _PSEUDO_LEXICON_SIZE:
        syllables = (
            onsets[rng.integers(len(onsets))]
            + nuclei[rng.integers(len(nuclei))]
            + codas[rng.integers(len(codas))]
            for _ in range(int(rng.choice([1, 2, 2, 3])))
        )
        word = "".join(syllables)
        if word not in FUNCTION_WORDS and word not in _english_words():
            words.setdefault(word)
    return _split_halves(words)


@cache
def _english_words() -> frozenset[str]:
    return frozenset(w for text in _EN_WORDS.values() for w in text.lower().split())


def vocabulary(language: str, half: int) -> frozenset[str]:
    """Content words of one vocabulary half (0: train/pool, 1: test/test-ood) of a language."""
    if half not in (0, 1):
        raise ValueError(f"half must be 0 or 1, got {half}")
    if language in ("en", "en-us"):
        return frozenset(w for halves in _english_halves().values() for w in halves[half])
    if language not in _PSEUDO:
        raise ValueError(f"unknown language {language!r}; known: {LANGUAGES + OOD_LANGUAGES}")
    return frozenset(_pseudo_halves(language)[half])


def _syllables(word: str) -> int:
    return max(1, len(_VOWEL_GROUPS.findall(word.lower())))


def _phrase_stream(language: str, half: int, rng: np.random.Generator) -> Iterator[list[str]]:
    """Endless random phrases (lists of words) over one vocabulary half of a language."""
    if language in ("en", "en-us"):
        slots = {k: v[half] for k, v in _english_halves().items()}
        slots["prep"] = _EN_PREP
        while True:
            template = _EN_TEMPLATES[int(rng.integers(len(_EN_TEMPLATES)))]
            yield [
                slots[tok[1:-1]][int(rng.integers(len(slots[tok[1:-1]])))]
                if tok.startswith("{")
                else tok
                for tok in template.split()
            ]
    lexicon = _pseudo_halves(language)[half]
    while True:
        picks = rng.integers(len(lexicon), size=int(rng.integers(3, 7)))
        yield [lexicon[i] for i in picks]
