"""The lexical (BM25) index on real tantivy folders, and the fusion of dense and lexical rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from indexer.fusion import Fusion, fuse, min_max
from indexer.lexical import LexicalError, LexicalIndex, build, catch_up, document_text

ROWS = [
    (1, "Plants", "Photosynthesis turns light and water into sugar"),
    (2, "Cats", "A cat likes to purr when it sleeps"),
    (3, "Dogs", "Dogs play fetch and chase the cats"),
    (4, "", "The quick brown fox jumps over the lazy dog"),
    (5, "Zebrafish", "Zebrafish regenerate heart tissue"),
]


@pytest.fixture
def lexical(tmp_path):
    index = build(tmp_path / "lexical", ROWS)
    yield index
    index.close()


def ids_of(result) -> list[int]:
    return result[1].tolist()


def test_analyzer_drops_stopwords_and_stems(lexical):
    assert lexical.terms("The cats are purring, and THE dogs played!") == [
        "cat",
        "pur",
        "dog",
        "play",
    ]
    assert lexical.terms("the of and") == []


def test_search_ranks_by_bm25_and_matches_the_formula(lexical):
    scores, ids = lexical.search("zebrafish heart", 10)
    assert ids.tolist() == [5]
    # BM25 (k1 1.2, b 0.75) of two terms each in one of 5 documents, tf 1; document 5 has
    # 4 indexed terms ("zebrafish" twice, "regener", "heart", "tissu": 5 tokens).
    lengths = [len(lexical.terms(document_text(t, x))) for _, t, x in ROWS]
    average = sum(lengths) / len(lengths)
    idf = math.log(1 + (5 - 1 + 0.5) / (1 + 0.5))

    def term(tf: int) -> float:
        return idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * lengths[4] / average))

    assert scores[0] == pytest.approx(term(2) + term(1), rel=1e-3)


def test_search_or_of_terms_best_first(lexical):
    scores, ids = lexical.search("cat purr", 10)
    assert ids.tolist() == [2, 3]  # 2 has both terms, 3 only "cats"
    assert scores[0] > scores[1] > 0


def test_query_without_indexed_terms_has_no_hits(lexical):
    for query in ("", "the and of", "unknownword"):
        scores, ids = lexical.search(query, 10)
        assert len(ids) == 0 and len(scores) == 0


def test_allowed_ids_filter_inside_the_search(tmp_path):
    # 60 documents mention "cat"; the best-scoring are the short ones (ids 1..30). Allowing
    # only long ones still returns k of them: the filter is applied inside the search.
    rows = [(i, "", "cat") for i in range(1, 31)] + [
        (i, "", "cat " + "filler words here " * 5) for i in range(31, 61)
    ]
    index = build(tmp_path / "lexical", rows)
    allowed = list(range(41, 61))
    _, ids = index.search("cat", 5, allowed=allowed)
    assert len(ids) == 5 and set(ids.tolist()) <= set(allowed)
    _, all_allowed = index.search("cat", 100, allowed=allowed)
    assert sorted(all_allowed.tolist()) == allowed
    assert ids_of(index.search("cat", 5, allowed=[])) == []
    assert ids_of(index.search("cat", 5, allowed=[7])) == [7]
    # A filter never adds documents that match no term.
    assert ids_of(index.search("dog", 5, allowed=[7])) == []
    index.close()


def test_incremental_add_remove_and_reopen(lexical, tmp_path):
    lexical.remove([2, 99])
    lexical.add([6], ["cat cat cat"])
    # Buffered changes are not visible before the commit.
    assert lexical.ids().tolist() == [1, 2, 3, 4, 5]
    lexical.commit()
    assert lexical.ids().tolist() == [1, 3, 4, 5, 6]
    assert ids_of(lexical.search("cat", 10)) == [6, 3]
    lexical.close()
    reopened = LexicalIndex.open(tmp_path / "lexical")
    assert reopened.count() == 5
    assert ids_of(reopened.search("purr", 10)) == []


def test_uncommitted_changes_are_lost_with_the_writer(tmp_path):
    """A writer that dies before commit leaves the last commit (kill -9 is tested with the store)."""
    index = build(tmp_path / "lexical", ROWS)
    index.add([7], ["walrus"])
    index.remove([1])
    index._writer.rollback()
    index.close()
    reopened = LexicalIndex.open(tmp_path / "lexical")
    assert reopened.ids().tolist() == [1, 2, 3, 4, 5]
    assert ids_of(reopened.search("walrus", 10)) == []


def test_catch_up_applies_the_id_difference(lexical):
    texts = {6: ("Walrus", "tusks"), 7: ("", "penguins")}
    added, removed = catch_up(
        lexical, np.array([1, 3, 5, 6, 7]), lambda ids: [(i, *texts[i]) for i in ids]
    )
    assert (added, removed) == (2, 2)
    assert lexical.ids().tolist() == [1, 3, 5, 6, 7]
    assert sorted(ids_of(lexical.search("walrus penguin", 10))) == [6, 7]
    assert catch_up(lexical, np.array([1, 3, 5, 6, 7]), lambda ids: []) == (0, 0)


def test_build_replaces_an_index_whole(tmp_path):
    first = build(tmp_path / "lexical", ROWS)
    first.close()
    second = build(tmp_path / "lexical", [(10, "", "walrus")])
    assert second.ids().tolist() == [10]
    assert [p.name for p in tmp_path.iterdir()] == ["lexical"]  # no staging folders left
    empty = build(tmp_path / "empty", [])
    assert empty.count() == 0 and ids_of(empty.search("walrus", 5)) == []


def test_missing_or_damaged_index_is_a_lexical_error(tmp_path):
    with pytest.raises(LexicalError, match="no lexical index"):
        LexicalIndex.open(tmp_path / "nothing")
    index = build(tmp_path / "lexical", ROWS)
    index.close()
    (tmp_path / "lexical" / "meta.json").write_text("{not json")
    with pytest.raises(LexicalError, match="unreadable"):
        LexicalIndex.open(tmp_path / "lexical")


# ------------------------------------------------------------------ fusion
DENSE = (np.array([0.9, 0.8, 0.1]), np.array([10, 20, 30]))
LEXICAL = (np.array([12.0, 3.0, 2.0]), np.array([30, 40, 10]))


def test_rrf_sums_reciprocal_ranks():
    scores, ids = fuse(DENSE, LEXICAL, k=10, fusion=Fusion("rrf"))
    expected = {
        10: 1 / 61 + 1 / 63,
        30: 1 / 63 + 1 / 61,
        20: 1 / 62,
        40: 1 / 62,
    }
    # 10 and 30 tie, as do 20 and 40: the smaller id first.
    assert ids.tolist() == [10, 30, 20, 40]
    assert scores.tolist() == pytest.approx([expected[i] for i in ids.tolist()])
    assert fuse(DENSE, LEXICAL, k=2, fusion=Fusion("rrf"))[1].tolist() == [10, 30]


def test_weighted_fusion_normalises_each_side():
    scores, ids = fuse(DENSE, LEXICAL, k=10, fusion=Fusion("weighted", alpha=0.5))
    dense = dict(zip([10, 20, 30], min_max(DENSE[0]), strict=True))
    lexical = dict(zip([30, 40, 10], min_max(LEXICAL[0]), strict=True))
    expected = {i: 0.5 * dense.get(i, 0) + 0.5 * lexical.get(i, 0) for i in (10, 20, 30, 40)}
    assert ids.tolist() == sorted(expected, key=lambda i: (-expected[i], i))
    assert scores.tolist() == pytest.approx([expected[i] for i in ids.tolist()])
    # alpha 1 is the dense ranking, alpha 0 the lexical one.
    assert fuse(DENSE, LEXICAL, 3, Fusion("weighted", alpha=1.0))[1].tolist() == [10, 20, 30]
    assert fuse(DENSE, LEXICAL, 3, Fusion("weighted", alpha=0.0))[1].tolist() == [30, 40, 10]


def test_fusion_ignores_empty_slots_and_empty_sides():
    padded = (np.array([0.9, -1.0]), np.array([10, -1]))
    assert fuse(padded, (np.zeros(0), np.zeros(0, np.int64)), 5)[1].tolist() == [10]
    assert fuse((np.zeros(0), np.zeros(0)), (np.zeros(0), np.zeros(0)), 5)[1].tolist() == []
    assert min_max(np.array([3.0, 3.0])).tolist() == [1.0, 1.0]


def test_fusion_settings_are_checked():
    assert Fusion().candidates(10) == 100 and Fusion().candidates(250) == 250
    with pytest.raises(ValueError, match="unknown fusion"):
        Fusion("max")
    with pytest.raises(ValueError, match="alpha"):
        Fusion("weighted", alpha=1.5)
