//! The collection definition in `collections/contexts.json`, shared by every vector backend: vector size and
//! distance, HNSW parameters, optimizer thresholds and payload indexes (in Qdrant's REST notation).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// The definition compiled into the binary; a file given in settings overrides it.
pub const BUILTIN_COLLECTION: &str = include_str!("../../../collections/contexts.json");

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectionSpec {
    pub name: String,
    pub vectors: VectorSpec,
    pub hnsw_config: HnswSpec,
    pub optimizers_config: OptimizerSpec,
    pub search: SearchSpec,
    /// Field name -> Qdrant payload schema (`"keyword"` or `{"type": "keyword", "is_tenant": true}`).
    pub payload_indexes: BTreeMap<String, Value>,
    /// A Qdrant cluster's layout: shards, copies of each shard, and how many copies must confirm a write.
    /// Absent: the server's defaults (one shard per node, one copy). The embedded store has no use for it.
    #[serde(default)]
    pub cluster: ClusterSpec,
    /// The lexical stage: a BM25 sparse vector of each point's text beside its dense vector. Absent: none.
    #[serde(default)]
    pub lexical: Option<LexicalSpec>,
    /// Scalar quantization of the dense vectors (`{"scalar": {"type": "int8", ...}}`), searched first and
    /// rescored with the originals (`search.quantization`). Absent: full-precision vectors only.
    #[serde(default)]
    pub quantization_config: Option<QuantizationSpec>,
}

/// Quantization in Qdrant's notation; only scalar int8 is offered.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuantizationSpec {
    pub scalar: ScalarQuantizationSpec,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScalarQuantizationSpec {
    /// "int8", the only scalar type.
    #[serde(rename = "type")]
    pub kind: ScalarKind,
    /// The share of values whose range the int8 steps cover (0.5-1.0); outliers are clipped.
    pub quantile: Option<f32>,
    /// Keep the quantized vectors in memory even when the originals are on disk.
    pub always_ram: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScalarKind {
    Int8,
}

/// How a search uses the quantized vectors.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuantizationSearchSpec {
    /// Re-score the quantized search's best candidates with the original vectors.
    pub rescore: bool,
    /// Candidates taken from the quantized search per hit asked for (>= 1), before rescoring.
    pub oversampling: f64,
}

/// BM25 over each point's text, as a sparse vector the engine weighs by inverse document frequency (Qdrant's
/// `idf` modifier), so the term statistics are the collection's own and always current.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LexicalSpec {
    /// The sparse vector's name in the collection.
    pub name: String,
    /// Term-frequency saturation (BM25 k1).
    pub k: f64,
    /// Length normalisation (BM25 b), 0-1.
    pub b: f64,
    /// The document length, in tokens, that `b` normalises to.
    pub avg_len: f64,
    /// A query term held by more points than this is common: its posting list is not walked, it only scores
    /// the candidates the rarer terms found (or, when every term is common, the vector stage's); 0: every
    /// term is walked. Read by the embedded store; a Qdrant server walks every term.
    #[serde(default = "default_common_term_points")]
    pub common_term_points: u32,
}

fn default_common_term_points() -> u32 {
    20_000
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub shard_number: Option<u32>,
    pub replication_factor: Option<u32>,
    pub write_consistency_factor: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VectorSpec {
    pub size: usize,
    /// "Cosine", "Dot", "Euclid" or "Manhattan".
    pub distance: String,
    /// Keep the original vectors in memory-mapped files, read from disk when not cached (with quantization
    /// they are only read to rescore the best candidates).
    #[serde(default)]
    pub on_disk: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HnswSpec {
    pub m: usize,
    pub ef_construct: usize,
    /// Below this many KB of vectors matching a filter, search is exact instead of HNSW.
    pub full_scan_threshold_kb: usize,
    pub payload_m: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    /// Segments holding more than this many KB of vectors get an HNSW index when optimized.
    pub indexing_threshold_kb: usize,
    /// Segments are merged up to this many KB of vectors; fewer, larger segments cost a search less CPU
    /// (one HNSW walk per segment). Absent: the engine's default (256 MB per indexing thread).
    #[serde(default)]
    pub max_segment_size_kb: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SearchSpec {
    pub hnsw_ef: usize,
    /// Used when the collection is quantized.
    #[serde(default)]
    pub quantization: Option<QuantizationSearchSpec>,
}

impl CollectionSpec {
    pub fn builtin() -> Self {
        Self::parse(BUILTIN_COLLECTION).expect("collections/contexts.json is valid")
    }

    /// How searches use the quantized vectors: the search settings, when the collection is quantized.
    pub fn search_quantization(&self) -> Option<QuantizationSearchSpec> {
        self.quantization_config.as_ref().and(self.search.quantization)
    }

    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let spec: Self = serde_json::from_str(text)?;
        spec.check().map_err(<serde_json::Error as serde::de::Error>::custom)?;
        Ok(spec)
    }

    /// The ranges the engines accept, checked here so a bad definition is refused when it is read.
    fn check(&self) -> Result<(), String> {
        if let Some(quantile) = self.quantization_config.as_ref().and_then(|q| q.scalar.quantile)
            && !(0.5..=1.0).contains(&quantile)
        {
            return Err(format!("quantization_config.scalar.quantile must be within 0.5-1.0, not {quantile}"));
        }
        if let Some(search) = self.search.quantization
            && (search.oversampling.is_nan() || search.oversampling < 1.0)
        {
            return Err(format!("search.quantization.oversampling must be at least 1, not {}", search.oversampling));
        }
        if self.hnsw_config.ef_construct < 4 {
            return Err(format!("hnsw_config.ef_construct must be at least 4, not {}", self.hnsw_config.ef_construct));
        }
        if self.search.hnsw_ef == 0 {
            return Err("search.hnsw_ef must be at least 1".into());
        }
        let optimizers = &self.optimizers_config;
        if let Some(max_kb) = optimizers.max_segment_size_kb
            && max_kb < optimizers.indexing_threshold_kb
        {
            // A segment capped below the indexing threshold would never get its HNSW index.
            return Err(format!(
                "optimizers_config.max_segment_size_kb ({max_kb}) must be at least indexing_threshold_kb ({})",
                optimizers.indexing_threshold_kb
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_collection_parses_with_384_dimensions_and_indexes() {
        let spec = CollectionSpec::builtin();
        assert_eq!(spec.vectors.size, 384);
        assert!(spec.payload_indexes.contains_key("session_id"));
        assert!(spec.payload_indexes.contains_key("tags"));
        assert_eq!(spec.lexical.map(|l| l.name), Some("lexical".to_string()));
        assert_eq!(spec.quantization_config.map(|q| q.scalar.kind), Some(ScalarKind::Int8));
        assert!(spec.search.quantization.is_some_and(|q| q.rescore && q.oversampling >= 1.0));
    }

    #[test]
    fn quantization_other_than_scalar_int8_is_refused() {
        let spec = |text: &str| serde_json::from_str::<QuantizationSpec>(text);
        assert!(spec(r#"{"scalar": {"type": "int8", "quantile": 0.99}}"#).is_ok());
        assert!(spec(r#"{"scalar": {"type": "uint4"}}"#).is_err());
        assert!(spec(r#"{"binary": {"always_ram": true}}"#).is_err());
    }

    #[test]
    fn quantization_settings_out_of_range_are_refused_when_read() {
        let with = |from: &str, to: &str| CollectionSpec::parse(&BUILTIN_COLLECTION.replacen(from, to, 1));
        assert!(with("\"quantile\": 0.99", "\"quantile\": 0.99").is_ok());
        let error = with("\"quantile\": 0.99", "\"quantile\": 0.2").unwrap_err().to_string();
        assert!(error.contains("quantile must be within 0.5-1.0"), "{error}");
        let error = with("\"oversampling\": 2.0", "\"oversampling\": 0.5").unwrap_err().to_string();
        assert!(error.contains("oversampling must be at least 1"), "{error}");
    }

    #[test]
    fn index_and_segment_settings_out_of_range_are_refused_when_read() {
        let with = |from: &str, to: &str| CollectionSpec::parse(&BUILTIN_COLLECTION.replacen(from, to, 1));
        let builtin = CollectionSpec::builtin();
        assert!(builtin.optimizers_config.max_segment_size_kb >= Some(builtin.optimizers_config.indexing_threshold_kb));
        let error = with("\"max_segment_size_kb\": 1000000", "\"max_segment_size_kb\": 1000").unwrap_err().to_string();
        assert!(error.contains("max_segment_size_kb (1000) must be at least indexing_threshold_kb (2000)"), "{error}");
        let error = with("\"ef_construct\": 128", "\"ef_construct\": 2").unwrap_err().to_string();
        assert!(error.contains("ef_construct must be at least 4"), "{error}");
        let error = with("\"hnsw_ef\": 64", "\"hnsw_ef\": 0").unwrap_err().to_string();
        assert!(error.contains("hnsw_ef must be at least 1"), "{error}");
        assert!(with(", \"max_segment_size_kb\": 1000000", "").is_ok(), "the engine's default when absent");
    }
}
