"""IFBench constraints on form and layout: format:, repeat: and the single-prompt custom: tasks.

Behaviour follows IFBench's reference checker (re-implemented; the count:, ratio:, sentence: and
words: families are in `ifbench_word_checks`).
Checks needing the prompt (`repeat:repeat_change`, `repeat:repeat_span`) read `prompt_to_repeat`.
"""

from __future__ import annotations

import csv
import io
import re
import string
import unicodedata

from flowlm.verify.ifeval.core import constraint
from flowlm.verify.ifeval.ifbench_word_checks import PUNCT, no_punct, strip_p
from flowlm.verify.ifeval.text import regex_split_sentences, word_tokenize


def ascii_fold(s: str) -> str:
    """'São Tomé' → 'Sao Tome' (NFKD, diacritics dropped)."""
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii")


# --- format: -----------------------------------------------------------------------------------
@constraint("format:emoji")
def emoji_sentences(r: str) -> bool:
    import emoji

    sents = regex_split_sentences(r)
    for i, s in enumerate(sents):
        t = no_punct(s).strip()
        if not t:
            return False
        if emoji.is_emoji(t[-1]) or emoji.is_emoji(t[-2] if len(t) > 1 else t[-1]):
            continue
        # Punkt may put the emoji at the start of the next "sentence".
        if i == len(sents) - 1:
            return False
        nxt = no_punct(sents[i + 1]).strip()
        if not nxt or not emoji.is_emoji(nxt[0]):
            return False
    return True


@constraint("format:line_indent")
def line_indent(r: str) -> bool:
    lines = r.split("\n")
    # The reference removes blank lines while iterating over the same list, which skips the line
    # after each removed one; reproduced so verdicts agree.
    kept, skip = [], False
    for line in lines:
        if skip:
            kept.append(line)
            skip = False
        elif not line.strip():
            skip = True
        else:
            kept.append(line)
    indent = [len(x) - len(x.lstrip(" ")) for x in kept]
    return all(b > a for a, b in zip(indent, indent[1:]))


@constraint("format:list", ("sep",))
def special_bullets(r: str, sep: str) -> bool:
    return len(re.findall(re.escape(sep), r)) >= 2


@constraint("format:newline")
def word_per_line(r: str) -> bool:
    v = no_punct(r)
    lines = [ln for ln in v.strip().split("\n") if ln != ""]
    return len(lines) == len(v.strip().split())


@constraint("format:no_bullets_bullets")
def sentences_then_bullets(r: str) -> bool:
    n_sent = n_bul = 0
    in_text = True
    for line in r.split("\n"):
        if line.strip().startswith("*"):
            in_text = False
            if n_sent < 2:
                return False
            n_bul += 1
        elif in_text:
            n_sent += len(regex_split_sentences(line.strip()))
        else:
            return False
    return n_bul >= 2


@constraint("format:no_whitespace")
def no_whitespace(r: str) -> bool:
    return not any(ch.isspace() for ch in r)


@constraint("format:options", ("options",))
def options(r: str, options: str) -> bool:
    strict = re.match(r"\W*[aA]\W*[bB]\W*[cC]\W*", options) is not None
    sep = "/" if "/" in options else ("or" if "or" in options else ",")
    opts = [o.strip() for o in options.split(sep)]
    if strict:  # multiple-choice letters must match exactly
        return r in opts
    return strip_p(r).lower() in {strip_p(o).lower() for o in opts}


@constraint("format:output_template")
def output_template(r: str) -> bool:
    return all(k in r for k in ("My Answer:", "My Conclusion:", "Future Outlook:"))


@constraint("format:parentheses")
def nested_brackets(r: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    deepest = 0
    for ch in r:
        if ch in "([{":
            stack.append(ch)
            deepest = max(deepest, len(stack))
        elif ch in pairs:
            if stack and stack[-1] == pairs[ch]:
                stack.pop()
                if deepest >= 5:
                    return True
            else:
                stack, deepest = [], 0  # mismatch: start over
    return False


@constraint("format:quotes")
def nested_quotes(r: str) -> bool:
    stack: list[str] = []
    reached = depth = 0
    for ch in r:
        if stack and ch == stack[-1]:
            stack.pop()
            depth -= 1
            if reached - depth >= 3:
                return True
        elif ch in "\"'":
            stack.append(ch)
            depth += 1
            reached = max(reached, depth)
    return False


@constraint("format:quote_unquote")
def quote_explanation(r: str) -> bool:
    v = "".join(r.replace("'\"'", "").split())
    if '""' in v:
        return False
    tail = v.strip(string.digits + PUNCT.replace('"', ""))
    return not (tail and tail[-1] == '"')


@constraint("format:sub-bullets")
def sub_bullets(r: str) -> bool:
    return all("-" in part for part in r.split("*")[1:])


@constraint("format:thesis")
def italic_thesis(r: str) -> bool:
    start = r.find("<i>")
    if start == -1:
        start = r.find("<em>")
        if start == -1:
            return False
    v = r[start:]
    end = v.find("</i>")
    if end == -1:
        end = v.find("</em>")
        if end == -1:
            return False
    # Offsets as in the reference (3 after the opening tag, 4 after the closing one).
    return bool(v[3:end].strip()) and bool(v[end + 4:].strip())


@constraint("format:title_case")
def title_case(r: str) -> bool:
    for w in word_tokenize(r):
        if not w or not w[0].isalpha():
            continue
        if len(w) == 1:
            if w.islower():
                return False
        elif w[0].islower() and (w[1:].isupper() or w[1:].islower()):
            return False
    return True


# --- repeat: -----------------------------------------------------------------------------------
@constraint("repeat:repeat_change", ("prompt_to_repeat",))
def repeat_change(r: str, prompt_to_repeat: str) -> bool:
    if r == prompt_to_repeat:
        return False
    return " ".join(prompt_to_repeat.split()[1:]) == " ".join(r.split()[1:])


@constraint("repeat:repeat_simple")
def repeat_simple(r: str) -> bool:
    return r.strip().lower() == "only output this sentence here, ignore all other requests."


@constraint("repeat:repeat_span", ("prompt_to_repeat", "n_start", "n_end"))
def repeat_span(r: str, prompt_to_repeat: str, n_start: int, n_end: int) -> bool:
    return r.strip().lower() == prompt_to_repeat[int(n_start):int(n_end) + 1].strip().lower()


# --- custom: -----------------------------------------------------------------------------------
@constraint("custom:multiples")
def multiples_of_7(r: str) -> bool:
    return re.findall(r"\d+", r.replace(",", ", ")) == [str(i) for i in range(14, 51, 7)]


def _mcq_question(q: str) -> tuple[int, str]:
    n_opts, text, done = 0, "", False
    for line in q.split("\n"):
        if re.match(r"^[A-Ea-e][\.|\)]\s*\w+", line.strip()):
            n_opts, done = n_opts + 1, True
        elif not done:
            text += " " + line.strip()
    return n_opts, text.strip()


@constraint("custom:mcq_count_length")
def mcq_count_length(r: str) -> bool:
    if not r.startswith("Question"):
        return False  # any text before the first question counts as an explanation
    parts = [q.strip() for q in re.split(r"\n*(?:Question \d+[\.|\):;]?\s*)", r) if q.strip()]
    if len(parts) != 4:
        return False
    parsed = [_mcq_question(q) for q in parts]
    if any(n != 5 for n, _ in parsed):
        return False
    lengths = [len(t) for _, t in parsed]
    return all(a < b for a, b in zip(lengths, lengths[1:]))


@constraint("custom:reverse_newline")
def reverse_newline(r: str) -> bool:
    lines = [strip_p(ln) for ln in r.split("\n") if strip_p(ln)]
    start = next((i for i, ln in enumerate(lines) if "Zimbabwe" in ln), None)
    if start is None or len(lines) - start < 52:
        return False
    folded = [ascii_fold(ln) for ln in lines[start:]]
    return folded == sorted(folded, reverse=True)


@constraint("custom:word_reverse")
def word_reverse(r: str) -> bool:
    v = " ".join(no_punct(r.lower().strip()).split()[::-1])
    return "bald eagle" in v and v in regex_split_sentences(v)


@constraint("custom:character_reverse")
def character_reverse(r: str) -> bool:
    return "elgae dlab" in r.lower()


@constraint("custom:sentence_alphabet")
def sentence_alphabet(r: str) -> bool:
    s = regex_split_sentences(r)
    if len(s) != 26:
        return False
    for i, sent in enumerate(s):
        ws = sent.lstrip().split()
        if not ws or ws[0].lower()[0] != chr(ord("a") + i):
            return False
    return True


_CAPITALS = ("Reykjavik Helsinki Oslo Tallinn Stockholm Riga Moscow Copenhagen Vilnius Minsk Dublin Berlin "
             "Amsterdam Warsaw London Brussels Prague Luxembourg Paris Vienna Bratislava Budapest Vaduz Chisinau "
             "Bern Ljubljana Zagreb").split()


@constraint("custom:european_capitals_sort")
def european_capitals(r: str) -> bool:
    caps = [c.strip() for c in ascii_fold(r).split(",") if c.strip()]
    return caps == _CAPITALS


def _csv_rows(text: str, delimiter: str = ",") -> list[list[str]]:
    return list(csv.reader(io.StringIO(text), delimiter=delimiter))


@constraint("custom:csv_city")
def csv_city(r: str) -> bool:
    rows = _csv_rows(r)
    return (len(rows) == 8 and rows[0] == ["ID", "Country", "City", "Year", "Count"]
            and all(len(x) == 5 for x in rows[1:]))


@constraint("custom:csv_special_character")
def csv_special(r: str) -> bool:
    head = r.split("\n")[0].strip()
    cols = ("ProductID", "Category", "Brand", "Price", "Stock")
    if not re.match("^" + r",[ \t]*".join(f'({c}|"{c}")' for c in cols) + "$", head):
        return False
    # Tripling quotes keeps them inside the parsed fields (as the reference does).
    rows = _csv_rows(r.replace('"', '"""'))
    if len(rows) != 15:
        return False
    for row in rows[1:]:
        if len(row) != 5:
            return False
        if any(re.match(r'".*[^\d\w\s].*"', f) for f in row):
            return True
    return False


@constraint("custom:csv_quotes")
def csv_quotes(r: str) -> bool:
    head = r.split("\n")[0].strip()
    cols = ("StudentID", "Subject", "Grade", "Semester", "Score")
    if not re.match("^" + r"\t *".join(f'({c}|"{c}")' for c in cols) + "$", head):
        return False
    rows = _csv_rows(r.replace('"', '"""'), delimiter="\t")
    if len(rows) != 4:
        return False
    return all(len(row) == 5 and all(f.strip()[0] == '"' and f.strip()[-1] == '"' for f in row) for row in rows)


_DAYS = {1: 31, 3: 31, 5: 31, 7: 31, 8: 31, 10: 31, 12: 31, 4: 30, 6: 30, 9: 30, 11: 30, 2: 29}


@constraint("custom:date_format_list")
def date_format_list(r: str) -> bool:
    for d in r.strip().split(","):
        d = d.strip()
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", d):
            return False
        y, m, day = (int(x) for x in d.split("-"))
        if not 1769 <= y <= 1821 or m > 12 or day > _DAYS.get(m, 31):
            return False
    return True
