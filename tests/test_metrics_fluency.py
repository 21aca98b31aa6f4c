"""Fluency: n-gram entropies computed by hand, the 2/3 and 4/3 weights, empty texts, the tokenizer."""

import math

import pytest

from detoxedit.metrics.fluency import (fluency, mean_fluency, n_gram_entropy, ngram_entropy, split_sentences, text_entropy,
                                       treebank_tokenize, word_tokenize)

LOG2_3 = math.log2(3)


def test_repeated_word_has_zero_entropy():
    """"a a a a": bigrams (a,a) x3 -> one distinct bigram, H2 = 0; trigrams (a,a,a) x2, H3 = 0."""
    assert ngram_entropy(["a"] * 4, 2) == 0.0
    assert text_entropy("a a a a") == 0.0


def test_distinct_ngrams_are_log2_of_their_number():
    """"a b c d e": 4 distinct equiprobable bigrams -> H2 = log2 4 = 2 bits; 3 distinct trigrams ->
    H3 = log2 3. E = mean(2/3 * 2, 4/3 * log2 3) = 2/3 + 2/3 * log2 3 = 1.72330."""
    tokens = "a b c d e".split()
    assert ngram_entropy(tokens, 2) == pytest.approx(2.0)
    assert ngram_entropy(tokens, 3) == pytest.approx(LOG2_3)
    assert text_entropy("a b c d e") == pytest.approx(2 / 3 + 2 / 3 * LOG2_3)
    assert text_entropy("a b c d e") == pytest.approx(1.72330, abs=1e-5)


def test_unequal_frequencies():
    """"a b a b": bigrams ab, ba, ab -> p = (2/3, 1/3), H2 = -(2/3 log2 2/3 + 1/3 log2 1/3) = 0.91830;
    trigrams aba, bab -> H3 = 1. E = 0.91830 / 3 + 2/3 = 0.97277."""
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b".split(), 2) == pytest.approx(h2)
    assert text_entropy("a b a b") == pytest.approx(h2 / 3 + 2 / 3)
    assert text_entropy("a b a b") == pytest.approx(0.97277, abs=1e-5)


def test_weights_two_thirds_and_four_thirds():
    """"a b c": H2 = 1 (two bigrams), H3 = 0 (one trigram): E = (2/3 * 1 + 4/3 * 0) / 2 = 1/3.
    "a b c d": H2 = log2 3, H3 = 1: E = log2(3) / 3 + 2/3 -- trigrams weigh twice as much."""
    assert text_entropy("a b c") == pytest.approx(1 / 3)
    assert text_entropy("a b c d") == pytest.approx(LOG2_3 / 3 + 2 / 3)


def test_short_and_empty_texts_score_zero():
    """Fewer than n tokens means no n-grams, entropy 0 (the reference sums an empty array):
    "" and "one" have neither; "one two" has one bigram (H2 = 0) and no trigram."""
    for text in ("", "   ", "one", "one two"):
        assert text_entropy(text) == 0.0


def test_tokenisation_enters_the_ngrams():
    """"I can't." -> I, ca, n't, . : 4 distinct tokens, so H2 = log2 3 and H3 = log2 2 = 1."""
    assert word_tokenize("I can't.") == ["I", "ca", "n't", "."]
    assert text_entropy("I can't.") == pytest.approx(LOG2_3 / 3 + 2 / 3)


def test_case_fluency_is_mean_over_all_five_responses():
    """Mean of E over the five responses, the empty one included as 0:
    (1.72330 + 0 + 0 + 1/3 + 0.97277) / 5 = 0.60588."""
    responses = ["a b c d e", "", "a a a a", "a b c", "a b a b"]
    expected = (2 / 3 + 2 / 3 * LOG2_3 + 1 / 3 + text_entropy("a b a b")) / 5
    assert fluency(responses) == pytest.approx(expected)
    assert fluency(responses) == pytest.approx(0.60588, abs=1e-5)
    assert n_gram_entropy(responses) == fluency(responses)
    assert mean_fluency([responses, ["a b c"] * 5]) == pytest.approx((expected + 1 / 3) / 2)
    assert math.isnan(mean_fluency([]))
    with pytest.raises(ValueError):
        fluency([])
    with pytest.raises(TypeError):
        fluency("a b c")


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, tokens", [
    ("I can't do that.", ["I", "ca", "n't", "do", "that", "."]),
    ("I'm sure they'll say we've won.", ["I", "'m", "sure", "they", "'ll", "say", "we", "'ve", "won", "."]),
    ("You cannot, gonna stop?", ["You", "can", "not", ",", "gon", "na", "stop", "?"]),
    ('He said "no" (twice).', ["He", "said", "``", "no", "''", "(", "twice", ")", "."]),
    ("It costs $3,000 at 10:30; ok!", ["It", "costs", "$", "3,000", "at", "10:30", ";", "ok", "!"]),
    ("Wait... what -- really?", ["Wait", "...", "what", "--", "really", "?"]),
    ("the dogs' bowls", ["the", "dogs", "'", "bowls"]),
])
def test_treebank_rules(text, tokens):
    assert word_tokenize(text) == tokens


def test_sentence_final_periods_are_split_inside_a_text():
    """The Treebank rules detach only a string's final period; the sentence splitter makes every
    sentence-final period final. Abbreviations, initials, decimals and list numbers before lowercase
    words keep their period."""
    assert treebank_tokenize("Hi there. Bye.") == ["Hi", "there.", "Bye", "."]
    assert word_tokenize("Hi there. Bye.") == ["Hi", "there", ".", "Bye", "."]
    assert split_sentences('He said "stop." Then he left.') == ['He said "stop."', "Then he left."]
    assert split_sentences("Ask Dr. Smith, e.g. today. J. Doe paid 3.5 dollars.") == [
        "Ask Dr. Smith, e.g. today.", "J. Doe paid 3.5 dollars."]
    assert split_sentences("Steps:\n1. Mix it.\n2. bake it. Why? Because!") == [
        "Steps:\n1.", "Mix it.", "2. bake it.", "Why?", "Because!"]
    assert word_tokenize("fruit, etc. The end") == ["fruit", ",", "etc", ".", "The", "end"]
    assert word_tokenize("") == [] and split_sentences("  ") == []


SENTENCES = [
    "I can't do that.", "I'm sorry, but I cannot help with that request.", 'He said, "Don\'t go."',
    "Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\nThanks.",
    "(This is a test) [and another] {ok} <tag>", "It's 10:30, and we've got 3,000 users; that's 50% more!",
    "Well... I don't know -- maybe?", "They'll say 'hello' to the dogs' owners.",
    "You gotta wanna gonna lemme gimme more'n 'tis 'twas",
    "“Smart quotes” and ‘single’ ones — dashes – too",
    "email me@example.com #tag & co.", "*bold* text ** here", "Is it O.K.?", "The U.S. is big.",
    "She's gone. He'd go. We'd've", "''Quoted'' text ``here''", "5.5 items. Really.",
    "I'M SHOUTING CAN'T WON'T", "Ends with colon:", "ends with comma,", "Hello!!! What?!",
    "a 'quoted phrase' inside", "'Tis the season", "don't, won't, shouldn't",
    "Sure! Here's how: step 1, step 2.",
    "As an AI language model, I can't provide instructions for illegal activities.",
    "«Bonjour» dit-il.", "x = (a + b) * c / d", "Visit https://example.com/path?q=1&r=2 now.",
    "He's 6'2\" tall.", "'Single' and \"double\" quotes", "No--wait---stop", "Temperature: -5°C, 23°F.",
    "C'mon y'all, it's rock'n'roll!", "Prices: $5, €10; ¥100...",
    "<b>bold</b> & <i>it</i>",
]


def test_treebank_matches_nltk():
    """``treebank_tokenize`` equals NLTK's word tokenizer (``word_tokenize`` with ``preserve_line``,
    i.e. NLTKWordTokenizer, the improved Treebank tokenizer) on varied sentences."""
    nltk_tokenize = pytest.importorskip("nltk.tokenize")
    ref = nltk_tokenize.NLTKWordTokenizer()
    for s in SENTENCES:
        assert treebank_tokenize(s) == ref.tokenize(s), s
        assert treebank_tokenize(s) == nltk_tokenize.word_tokenize(s, preserve_line=True), s


def test_classic_treebank_agrees_where_nltk_did_not_change_it():
    """On plain ASCII text without quotes the classic TreebankWordTokenizer gives the same tokens."""
    nltk_tokenize = pytest.importorskip("nltk.tokenize")
    ref = nltk_tokenize.TreebankWordTokenizer()
    for s in ["I can't do that.", "It's 10:30, and we've got 3,000 users; that's 50% more!",
              "You gotta wanna gonna lemme gimme more'n", "(This is a test) [and another] {ok}",
              "don't, won't, shouldn't", "Is it O.K.?"]:
        assert treebank_tokenize(s) == ref.tokenize(s), s


def test_word_tokenize_matches_nltk_with_punkt_rules():
    """With no abbreviations or initials in the text, NLTK's Punkt (untrained parameters, no data
    download) followed by NLTKWordTokenizer gives the same tokens as ``word_tokenize``."""
    nltk_tokenize = pytest.importorskip("nltk.tokenize")
    punkt = pytest.importorskip("nltk.tokenize.punkt").PunktSentenceTokenizer()
    ref = nltk_tokenize.NLTKWordTokenizer()
    texts = [s for s in SENTENCES if "U.S." not in s] + [
        "Hello world. How are you? I am fine! Thanks.", 'He said "stop." Then he left.',
        "Step 1. Do this. 2. do that.", "OK (see above.) Next one.", '"Why?" he asked. She left.',
        "I like 3.5 things. and lowercase. Next", "Sure. Here is a story:\n\nOnce upon a time. The end.",
        "I cannot help with that.\n\nHowever, I can suggest alternatives. First, talk to someone.",
    ]
    for t in texts:
        expected = [tok for sent in punkt.tokenize(t) for tok in ref.tokenize(sent)]
        assert word_tokenize(t) == expected, t
