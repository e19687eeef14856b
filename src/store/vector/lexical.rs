//! The lexical stage's sparse vectors, the same for every vector backend: qdrant-edge's BM25 (the Qdrant
//! server's own tokenizer pipeline: lowercase, English stopwords and stemming, tokens hashed to dimensions)
//! turns a point's text into term weights saturated by frequency and normalised by length; the collection
//! weighs each query term by its inverse document frequency at search time (`idf` modifier), so a match on a
//! rare word counts for more than one on a common word. The vector is derived from the text alone, so every
//! path that writes a point (store, update, repair, reindex, import) writes it too.

use qdrant_edge::SparseVector;
use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};

use super::collection::LexicalSpec;
use crate::error::{StoreError, StoreResult};

pub struct Lexical {
    pub name: String,
    bm25: EdgeBm25,
}

impl Lexical {
    pub fn new(spec: &LexicalSpec) -> StoreResult<Self> {
        // The rest (tokenizer, English stopwords and stemmer) are the defaults the Qdrant server uses too.
        let config: EdgeBm25Config =
            serde_json::from_value(serde_json::json!({"k": spec.k, "b": spec.b, "avg_len": spec.avg_len}))
                .map_err(|e| StoreError::Backend(format!("lexical: {e}")))?;
        let bm25 = EdgeBm25::new(config).map_err(|e| StoreError::Backend(format!("lexical: {e}")))?;
        Ok(Self { name: spec.name.clone(), bm25 })
    }

    /// A point's term weights: (dimensions, weights), empty for a text of stopwords only.
    pub fn document(&self, text: &str) -> (Vec<u32>, Vec<f32>) {
        let SparseVector { indices, values } = self.bm25.embed_document(text);
        (indices, values)
    }

    /// A query's terms, each of weight 1 (the engine multiplies in the IDF; the embedded store does, for the
    /// candidates it scores itself).
    pub fn query(&self, text: &str) -> (Vec<u32>, Vec<f32>) {
        let SparseVector { indices, values } = self.bm25.embed_query(text);
        (indices, values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lexical() -> Lexical {
        Lexical::new(&super::super::CollectionSpec::builtin().lexical.unwrap()).unwrap()
    }

    #[test]
    fn words_match_across_inflections_and_stopwords_carry_nothing() {
        let lexical = lexical();
        let (document, weights) = lexical.document("The deployments failed twice during the migration");
        assert_eq!(document.len(), weights.len());
        assert!(weights.iter().all(|w| *w > 0.0));
        let (query, _) = lexical.query("deployment failing");
        assert!(query.iter().all(|term| document.contains(term)), "stemmed terms meet: {query:?} in {document:?}");
        assert!(lexical.query("the of and").0.is_empty(), "stopwords only");
        let (repeated, weights) = lexical.document("retry retry retry backoff");
        let retry = lexical.query("retry").0[0];
        let backoff = lexical.query("backoff").0[0];
        let weight = |term| weights[repeated.iter().position(|t| *t == term).unwrap()];
        assert!(weight(retry) > weight(backoff), "frequency raises a term's weight");
    }
}
