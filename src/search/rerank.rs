//! Fuzzy rerank: RapidFuzz-style similarity of the query against each candidate's text, fused with the
//! vector score.
//!
//! The `rapidfuzz` crate offers the Indel `ratio` but not RapidFuzz's partial or token-set scorers, and a
//! whole-string ratio of a short query against a long text is near zero. So the query is split into
//! tokens and each token is matched to its best token in the text with `ratio`; the token scores are
//! averaged, weighted by token length. Typos still match ("pasword" ~ "password" = 0.93).

use std::collections::HashSet;

use rapidfuzz::fuzz::RatioBatchComparator;

/// Text beyond this many characters is not scored (the head of a context carries most of its meaning).
const MAX_SCORED_CHARS: usize = 4096;
/// The query's first this many distinct tokens are scored. Each token is compared with every distinct word
/// of every candidate, so this bounds the work a long query (up to 2 048 characters of one-letter tokens)
/// can ask of the rerank; a query of natural language rarely has more.
const MAX_QUERY_TOKENS: usize = 32;
/// At most this many distinct words of a text's scored head are compared (the first ones).
const MAX_SCORED_WORDS: usize = 1024;

/// Lower-cases and keeps letters and digits, with single spaces between words.
pub fn normalise(text: &str) -> String {
    normalise_head(text, usize::MAX)
}

/// The first `max_chars` characters of `normalise(text)`, reading no more of `text` than they take.
fn normalise_head(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_mul(2)));
    let mut room = max_chars;
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            if room == 0 {
                break;
            }
            out.push(' ');
            room -= 1;
        }
        for c in word.chars().flat_map(char::to_lowercase) {
            if room == 0 {
                return out;
            }
            out.push(c);
            room -= 1;
        }
    }
    out
}

/// A query prepared once and scored against many texts.
pub struct FuzzyQuery {
    tokens: Vec<(String, RatioBatchComparator<char>)>,
    total_weight: f64,
}

impl FuzzyQuery {
    pub fn new(normalised_query: &str) -> Self {
        let mut seen = HashSet::new();
        let tokens: Vec<(String, RatioBatchComparator<char>)> = normalised_query
            .split(' ')
            .filter(|t| !t.is_empty() && seen.insert(t.to_string()))
            .take(MAX_QUERY_TOKENS)
            .map(|t| (t.to_string(), RatioBatchComparator::new(t.chars())))
            .collect();
        let total_weight = tokens.iter().map(|(t, _)| t.chars().count() as f64).sum();
        Self { tokens, total_weight }
    }

    /// Similarity in [0, 1] of the query to a text as stored: only its scored head is normalised, so a
    /// 64 KiB text costs no more than a 4 KiB one.
    pub fn score_text(&self, text: &str) -> f64 {
        self.score(&normalise_head(text, MAX_SCORED_CHARS))
    }

    /// Similarity in [0, 1] of the query to a normalised text.
    pub fn score(&self, normalised_text: &str) -> f64 {
        if self.tokens.is_empty() || self.total_weight == 0.0 {
            return 0.0;
        }
        let head = match normalised_text.char_indices().nth(MAX_SCORED_CHARS) {
            Some((end, _)) => &normalised_text[..end],
            None => normalised_text,
        };
        let mut words: HashSet<&str> = HashSet::new();
        for word in head.split(' ').filter(|w| !w.is_empty()) {
            if words.len() == MAX_SCORED_WORDS {
                break;
            }
            words.insert(word);
        }
        let lengths: Vec<(&str, usize)> = words.iter().map(|w| (*w, w.chars().count())).collect();
        let mut weighted = 0.0;
        for (token, comparator) in &self.tokens {
            let token_len = token.chars().count();
            let best = if words.contains(token.as_str()) {
                1.0
            } else {
                let mut best = 0.0_f64;
                for &(word, word_len) in &lengths {
                    // The Indel ratio of two strings is at most 2 x min(len) / (sum of lens): a word whose
                    // length cannot beat the best so far is not compared.
                    let bound = 2.0 * token_len.min(word_len) as f64 / (token_len + word_len) as f64;
                    if bound > best {
                        best = best.max(comparator.similarity(word.chars()));
                    }
                }
                best
            };
            weighted += best * token_len as f64;
        }
        weighted / self.total_weight
    }
}

/// Weighted sum of the vector score (cosine, clamped to [0, 1]) and the fuzzy score.
pub fn fuse(vector_score: f64, fuzzy_score: f64, vector_weight: f64) -> f64 {
    vector_weight * vector_score.clamp(0.0, 1.0) + (1.0 - vector_weight) * fuzzy_score
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalise_lowercases_and_drops_punctuation() {
        assert_eq!(normalise("  Hello, World!  It's  "), "hello world it s");
    }

    #[test]
    fn exact_words_score_one_and_typos_score_high() {
        let query = FuzzyQuery::new(&normalise("reset password"));
        assert_eq!(query.score(&normalise("How do I reset my password?")), 1.0);
        let typo = query.score(&normalise("how to reset a pasword"));
        assert!(typo > 0.9 && typo < 1.0, "{typo}");
        assert!(query.score(&normalise("the weather is lovely")) < 0.6);
    }

    #[test]
    fn only_the_first_distinct_query_tokens_are_scored() {
        let tokens: Vec<String> = (0..MAX_QUERY_TOKENS + 8).map(|n| format!("w{n}")).collect();
        let query = FuzzyQuery::new(&tokens.join(" "));
        assert_eq!(query.tokens.len(), MAX_QUERY_TOKENS);
        // A text with the first tokens only matches fully: the tokens past the cap carry no weight.
        assert_eq!(query.score(&tokens[..MAX_QUERY_TOKENS].join(" ")), 1.0);
    }

    #[test]
    fn empty_query_scores_zero() {
        assert_eq!(FuzzyQuery::new("").score("anything"), 0.0);
    }

    proptest! {
        #[test]
        fn the_normalised_head_is_the_head_of_the_normalised_text(text in "(?s).{0,300}", max in 0usize..200) {
            let whole: String = normalise(&text).chars().take(max).collect();
            prop_assert_eq!(normalise_head(&text, max), whole);
        }

        #[test]
        fn fuzzy_score_is_within_unit_interval(query in "[a-z ]{0,40}", text in "[a-z ]{0,200}") {
            let score = FuzzyQuery::new(&normalise(&query)).score(&normalise(&text));
            prop_assert!((0.0..=1.0).contains(&score));
        }

        /// Skipping the words whose length bounds their ratio below the best so far changes no score.
        #[test]
        fn the_length_bound_skips_only_words_that_cannot_win(query in "[a-z ]{0,40}", text in "[a-z ]{0,200}") {
            let fuzzy = FuzzyQuery::new(&normalise(&query));
            let text = normalise(&text);
            let words: HashSet<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
            let mut weighted = 0.0;
            for (token, comparator) in &fuzzy.tokens {
                let best = words.iter().map(|w| comparator.similarity(w.chars())).fold(0.0_f64, f64::max);
                weighted += best * token.chars().count() as f64;
            }
            let every_word = if fuzzy.total_weight == 0.0 { 0.0 } else { weighted / fuzzy.total_weight };
            prop_assert!((fuzzy.score(&text) - every_word).abs() < 1e-12, "{} vs {}", fuzzy.score(&text), every_word);
        }

        #[test]
        fn a_text_containing_every_query_word_scores_one(words in proptest::collection::vec("[a-z]{1,8}", 1..6), filler in "[a-z ]{0,50}") {
            let query = words.join(" ");
            let text = format!("{filler} {query} {filler}");
            prop_assert_eq!(FuzzyQuery::new(&normalise(&query)).score(&normalise(&text)), 1.0);
        }

        #[test]
        fn fused_score_is_monotonic_in_each_part(v in 0.0f64..1.0, f in 0.0f64..1.0, w in 0.0f64..1.0, dv in 0.0f64..0.5) {
            prop_assert!(fuse(v + dv, f, w) >= fuse(v, f, w) - 1e-12);
            prop_assert!(fuse(v, (f + dv).min(1.0), w) >= fuse(v, f, w) - 1e-12);
        }
    }
}
