"""Tests of the corpus cleaning functions (ssmquant.data.corpus) on small hand-written inputs; no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssmquant.data import corpus as C

SAMPLE_DIR = Path(C.__file__).resolve().parents[1] / "assets" / "sample"


# --- Brown corpus -----------------------------------------------------------------------------------------------


def test_brown_tags_are_stripped_and_tokens_rejoined():
    tagged = (
        "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc it's/pps+bez over/rp ./.\n"
        "\tIt/pps cost/vbd 1/2/cd a/at dollar/nn (/( Jr./np )/) ./.\n\n\n"
        "\tNew/jj-tl paragraph/nn-hl ?/.\n"
    )
    assert C.strip_brown_tags(tagged) == (
        'The jury said "no evidence", and it\'s over. It cost 1/2 a dollar (Jr.).\n\nNew paragraph?'
    )


def test_brown_abbreviation_at_sentence_end_keeps_one_period():
    assert C.strip_brown_tags("\tby/in Ivan/np Allen/np Jr./np ./.") == "by Ivan Allen Jr."


# --- reStructuredText -------------------------------------------------------------------------------------------


RST = """\
.. _label:

Title of the page
=================

.. module:: json
   :synopsis: Encode and decode JSON.

Some *emphasis*, **strong**, ``literal`` and :func:`json.dumps` text,
see :ref:`the guide <guide-label>` and :rfc:`7159` and `Python <https://python.org>`_.

Run this::

    $ make htmldocs

.. code-block:: c

   int main(void) { return 0; }

.. note::
   Keep this note.

.. function:: dumps(obj, *, \\
              skipkeys=False)

   Serialize *obj*.

.. versionadded:: 3.2
   Added *skipkeys*.

>>> print(1)
1

+-----+-----+
| a   | b   |
+-----+-----+

.. this is a comment
   spanning two lines

- item one
  continued
- item two
"""


def test_rst_keeps_prose_and_drops_markup_and_code():
    out = C.clean_rst(RST)
    assert out == (
        "Title of the page\n\n"
        "Some emphasis, strong, literal and json.dumps text, see the guide and RFC 7159 and Python.\n\n"
        "Run this:\n\n"
        "Keep this note.\n\n"
        "Serialize obj.\n\n"
        "Added skipkeys.\n\n"
        "- item one continued\n- item two"
    )


@pytest.mark.parametrize("bad", ["make htmldocs", "int main", "print(1)", "skipkeys=False", "synopsis",
                                 "comment", "+-----", "=====", "_label", "<"])
def test_rst_leaves_no_markup_or_code(bad):
    assert bad not in C.clean_rst(RST)


def test_rst_bare_literal_marker_and_inline_roles():
    assert C.clean_rst("Example:\n\n::\n\n   code here\n\nAfter.") == "Example:\n\nAfter."
    assert C.rst_inline(":meth:`~foo.Bar.baz`, :class:`!Quux`") == "baz, Quux"


# --- POD --------------------------------------------------------------------------------------------------------


def test_pod_commands_codes_and_verbatim():
    pod = (
        "=head1 NAME\n\nperlfoo - a B<bold> and I<italic> thing\n\n"
        "=head2 Use\n\nCall C<< $x->y >> or C<foo()>, see L<perlsyn/Loops> and L<the docs|perldoc>; 1 E<lt> 2.\n\n"
        "    my $code = 1;   # verbatim\n\n"
        "=over 4\n\n=item *\n\nFirst.\n\n=back\n\n"
        "=begin html\n\n<p>skip</p>\n\n=end html\n\n=cut\n"
    )
    assert C.clean_pod(pod) == (
        "NAME\n\nperlfoo - a bold and italic thing\n\nUse\n\n"
        "Call $x->y or foo(), see Loops and the docs; 1 < 2.\n\nFirst."
    )


# --- GCIDE, WordNet, Jargon File, fortunes ------------------------------------------------------------------------


def test_gcide_entry():
    entry = (
        'Apple \\Ap"ple\\ ([a^]p"p\'l), n. [OE. appel, AS. [ae]ppel; akin\n'
        "   to G. apfel.]\n"
        "   1. The fleshy pome of a tree ({Pyrus\n"
        "      malus}).\n"
        "      [1913 Webster]\n\n"
        "            Thy apples are sweet.             --Shak.\n"
        "      [1913 Webster]\n"
    )
    assert C.clean_gcide_entry(entry) == "Apple, n. 1. The fleshy pome of a tree (Pyrus malus).\n\nThy apples are sweet."


def test_wordnet_synset_line():
    line = ("00977214 04 n 02 swoop 1 big_raid 0 002 @ 00976953 n 0000 + 01440028 v 0101 | a very rapid raid; "
            '"the swoop at dawn"  \n')
    assert C.wordnet_synset(line) == (4, 'swoop, big raid (noun): a very rapid raid; "the swoop at dawn"')
    assert C.wordnet_synset("  1 This software and database is being provided to you\n") is None


def test_split_jargon_entries_and_chapters():
    text = (
        "The Jargon File\n\nTable of Contents\n\n   1. Introduction\n\n"
        "Chapter\u00a01.\u00a0Introduction\n\n   Hackers talk.\n   A lot.\n\n"
        "Glossary\n\n   bit\n\n   kludge\n\n"
        "   :bit: n.\n\n   [techspeak] The unit of {information}.\n\n"
        "   :kludge: /klooj/\n\n   A clever hack.\n"
    )
    assert C.split_jargon(text) == [
        ("Chapter 1. Introduction", "Chapter 1. Introduction\n\nHackers talk. A lot."),
        ("glossary/bit", "bit: n.\n\n[techspeak] The unit of information."),
        ("glossary/kludge", "kludge: /klooj/\n\nA clever hack."),
    ]


def test_split_fortunes_keeps_layout_and_removes_overstrike():
    text = "Roses are red,\n\tviolets blue.\n%\n_\bB_\bo_\bl_\bd text\n%\n"
    assert C.split_fortunes(text) == ["Roses are red,\n        violets blue.", "Bold text"]


# --- splitting and the sample format ------------------------------------------------------------------------------


def test_split_is_deterministic_seeded_and_near_fraction():
    docs = [f"document number {i}" for i in range(20000)]
    a = [C.assign_split(d, seed=1, valid_fraction=0.01) for d in docs]
    assert a == [C.assign_split(d, seed=1, valid_fraction=0.01) for d in docs]
    assert a != [C.assign_split(d, seed=2, valid_fraction=0.01) for d in docs]
    n_valid = a.count("valid")
    assert 140 < n_valid < 260, n_valid  # 200 expected; binomial sd ~14


def test_split_is_nested_in_the_fraction_and_order_free():
    docs = [f"doc {i}" for i in range(5000)]
    small = {d for d in docs if C.assign_split(d, seed=0, valid_fraction=0.01) == "valid"}
    large = {d for d in docs if C.assign_split(d, seed=0, valid_fraction=0.04) == "valid"}
    assert small <= large
    assert {d for d in reversed(docs) if C.assign_split(d, seed=0, valid_fraction=0.01) == "valid"} == small


def test_join_split_documents_round_trip():
    docs = ["first doc\n\nwith a paragraph", "second", "third\nline"]
    text = C.join_documents(docs)
    assert text.count(C.DOC_SEPARATOR) == 2
    assert C.split_documents(text) == docs
    with pytest.raises(ValueError):
        C.join_documents([f"bad {C.DOC_SEPARATOR} doc"])


def test_reflow_and_whitespace():
    assert C.reflow("a\nb\n\n- x\n  y\n- z") == "a b\n\n- x y\n- z"
    assert C.normalize_whitespace("a  \r\n\n\n\nb\n") == "a\n\nb"


# --- the committed samples --------------------------------------------------------------------------------------


def test_committed_samples_are_disjoint_and_sized():
    heldout = C.split_documents((SAMPLE_DIR / "heldout.txt").read_text(encoding="utf-8"))
    train = C.split_documents((SAMPLE_DIR / "train.txt").read_text(encoding="utf-8"))
    assert len(heldout) > 50 and len(train) > 500
    assert not set(heldout) & set(train)
    # Built with valid_fraction 0.04 for these sources: every held-out document hashes to "valid".
    assert all(C.assign_split(d, seed=1234, valid_fraction=0.04) == "valid" for d in heldout)
    assert all(C.assign_split(d, seed=1234, valid_fraction=0.04) == "train" for d in train)
    assert (SAMPLE_DIR / "LICENSE.md").is_file()
