//! Search: prefilter -> vector and lexical stages (candidates pooled) -> fuzzy rerank -> optional graph
//! expansion, with a result cache.
//!
//! Scoring: each stage's scores are put on one scale by distribution-based score fusion (as Qdrant's `dbsf`
//! fusion does): a score maps to `(score - (mean - 3 sd)) / (6 sd)`, clamped to 0-1, with the mean and
//! standard deviation of that stage's own hits, so a stage whose scores sit in a narrow band (cosines of one
//! query often span 0.3-0.6) and one whose scores spread wide (BM25) weigh alike. The retrieval score is
//! `(1 - lexical_weight) x vector + lexical_weight x lexical` over those (a stage that did not run leaves the
//! other alone), and the final score `vector_weight x retrieval + (1 - vector_weight) x fuzzy` (retrieval
//! alone when the fuzzy stage is off). A candidate found by one stage only is scored by the other too where
//! it can be: a lexical hit's cosine is computed from its stored vector; a vector hit outside the lexical top
//! scores lexical 0. The breakdown a hit carries keeps the stages' own scores: the cosine, and the BM25 score
//! divided by the best candidate's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::recalls::{recall_score, recency_score};
use super::{
    ContextService, RelatedSummary, ScoreBreakdown, SearchHit, SearchMode, SearchRequest, SearchResponse, Stage,
};
use crate::auth::{Permission, Principal};
use crate::domain::{Context, ContextFilter, Timestamp, limits, parse_limit};
use crate::error::{ServiceError, ServiceResult};
use crate::search::rerank::{FuzzyQuery, fuse, normalise};
use crate::store::VectorStore;
use crate::store::graph::RecallStats;
use crate::store::vector::LexicalHits;
use crate::store::vector::{SearchPath, search_filled};

/// Related contexts shown per search hit at most.
const RELATED_PER_HIT: usize = 10;
/// A related context's summary carries at most this many characters of its text: 10 summaries for each
/// of up to 200 hits must not make an answer of hundreds of megabytes.
const RELATED_PREVIEW_CHARS: usize = 500;
/// A cached answer weighs one entry per this many bytes of text it carries (at least one), so
/// `search.cache_entries` bounds the cache's memory and not only its count of answers.
const CACHE_ENTRY_BYTES: usize = 4096;

/// The result cache's weight of an answer: its key (the query and filter, up to tens of kB) and its hits'
/// and related contexts' text, in `CACHE_ENTRY_BYTES`.
pub(super) fn cache_weight(key: &str, answer: &SearchResponse) -> u32 {
    let text: usize = key.len()
        + answer
            .hits
            .iter()
            .map(|hit| hit.context.content.len() + hit.related.iter().map(|r| r.content.len()).sum::<usize>())
            .sum::<usize>();
    u32::try_from(1 + text / CACHE_ENTRY_BYTES).unwrap_or(u32::MAX)
}

/// A validated search.
#[derive(Clone)]
pub(super) struct SearchPlan {
    query: String,
    normalised: String,
    filter: ContextFilter,
    limit: usize,
    candidates: usize,
    fuzzy_threshold: f64,
    vector_weight: f64,
    lexical_weight: f64,
    stages: Stages,
    expand_related: bool,
    /// Weights of the recency and recall scores (0: not computed).
    recency_weight: f64,
    recall_weight: f64,
}

fn unit_interval(field: &str, value: Option<f64>, default: f64) -> ServiceResult<f64> {
    let value = value.unwrap_or(default);
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ServiceError::invalid(format!("{field} must be between 0 and 1")))
    }
}

/// Which stages a search asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Stages {
    vector: bool,
    lexical: bool,
    fuzzy: bool,
}

impl Stages {
    const ALL: Stages = Stages { vector: true, lexical: true, fuzzy: true };

    fn parse(stages: Option<Vec<Stage>>) -> ServiceResult<Self> {
        let Some(stages) = stages else { return Ok(Self::ALL) };
        if stages.is_empty() {
            return Err(ServiceError::invalid("stages must name at least one of vector, lexical, fuzzy"));
        }
        Ok(Self {
            vector: stages.contains(&Stage::Vector),
            lexical: stages.contains(&Stage::Lexical),
            fuzzy: stages.contains(&Stage::Fuzzy),
        })
    }
}

/// What the vector, lexical and fuzzy stages found, before any graph expansion.
pub(super) struct Ranked {
    pub hits: Vec<SearchHit>,
    pub mode: SearchMode,
    pub stages: Vec<Stage>,
    pub degraded_reason: Option<String>,
    pub candidates: usize,
}

/// A candidate with the scores its stages gave it.
struct Candidate {
    context: Context,
    /// The cosine to the query (0 when unknown).
    vector: f64,
    /// Whether the vector stage found it (a lexical hit's cosine is computed afterwards).
    from_vector: bool,
    /// The raw BM25 score; None when the lexical stage did not find it.
    lexical: Option<f64>,
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 { 0.0 } else { dot / (aa.sqrt() * bb.sqrt()) }
}

impl ContextService {
    fn plan_search(&self, principal: &Principal, request: SearchRequest) -> ServiceResult<SearchPlan> {
        let agent = principal.acting_agent(request.agent_id.as_deref())?;
        let filter = ContextFilter::parse(request.filter, principal.read_scope(&agent), Timestamp::now())?;
        let mut plan = self.plan_recall(
            &request.query,
            filter,
            request.limit,
            request.candidates,
            request.fuzzy_threshold,
            request.vector_weight,
        )?;
        plan.expand_related = request.expand_related;
        plan.lexical_weight =
            unit_interval("lexical_weight", request.lexical_weight, self.options.default_lexical_weight)?;
        plan.stages = Stages::parse(request.stages)?;
        plan.recency_weight = unit_interval("recency_weight", request.recency_weight, 0.0)?;
        plan.recall_weight = unit_interval("recall_weight", request.recall_weight, 0.0)?;
        if plan.recency_weight + plan.recall_weight > 1.0 {
            return Err(ServiceError::invalid("recency_weight + recall_weight must be at most 1"));
        }
        Ok(plan)
    }

    /// A validated query over a prefilter, for contexts or agent state.
    pub(super) fn plan_recall(
        &self,
        query: &str,
        filter: ContextFilter,
        limit: Option<usize>,
        candidates: Option<usize>,
        fuzzy_threshold: Option<f64>,
        vector_weight: Option<f64>,
    ) -> ServiceResult<SearchPlan> {
        let query = query.trim().to_string();
        if query.is_empty() {
            return Err(ServiceError::invalid("query must not be empty"));
        }
        if query.chars().count() > limits::MAX_QUERY_CHARS {
            return Err(ServiceError::invalid(format!("query must be at most {} characters", limits::MAX_QUERY_CHARS)));
        }
        let limit = parse_limit(limit)?;
        let candidates = candidates.unwrap_or((3 * limit).max(30));
        if candidates < limit || candidates > limits::MAX_CANDIDATES {
            return Err(ServiceError::invalid(format!(
                "candidates must be between limit and {}",
                limits::MAX_CANDIDATES
            )));
        }
        Ok(SearchPlan {
            normalised: normalise(&query),
            query,
            filter,
            limit,
            candidates,
            fuzzy_threshold: unit_interval("fuzzy_threshold", fuzzy_threshold, 0.0)?,
            vector_weight: unit_interval("vector_weight", vector_weight, self.options.default_vector_weight)?,
            lexical_weight: self.options.default_lexical_weight,
            stages: Stages::ALL,
            expand_related: false,
            recency_weight: 0.0,
            recall_weight: 0.0,
        })
    }

    fn cache_key(&self, plan: &SearchPlan) -> String {
        let mut filter = plan.filter.clone();
        filter.now = Timestamp(0);
        format!(
            "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{:?}",
            self.generation.load(Ordering::SeqCst),
            serde_json::to_string(&filter).unwrap_or_default(),
            plan.query,
            plan.limit,
            plan.candidates,
            plan.fuzzy_threshold,
            plan.vector_weight,
            plan.expand_related,
            plan.recency_weight,
            plan.recall_weight,
            plan.lexical_weight,
            plan.stages
        )
    }

    pub async fn search(&self, principal: &Principal, request: SearchRequest) -> ServiceResult<SearchResponse> {
        principal.require(Permission::Read)?;
        let plan = self.plan_search(principal, request)?;
        let key = self.cache_key(&plan);
        // Recency and recall change without a write, so answers that weigh them are not cached.
        let caching = self.options.search_cache_entries > 0 && plan.recency_weight == 0.0 && plan.recall_weight == 0.0;
        if caching && let Some(cached) = self.search_cache.get(&key).await {
            self.metrics.search_cache_hits.inc();
            let now = Timestamp::now();
            let mut response = cached.as_ref().clone();
            response.hits.retain(|hit| !hit.context.is_expired(now));
            response.cached = true;
            self.recalls.note(response.hits.iter().map(|hit| hit.context.id));
            return Ok(response);
        }
        self.metrics.search_cache_misses.inc();
        let response = self.run_search(&plan).await?;
        self.recalls.note(response.hits.iter().map(|hit| hit.context.id));
        // A degraded answer is not cached: the next call should try the embedder and every stage again.
        if caching && response.mode == SearchMode::Hybrid && response.degraded_reason.is_none() {
            self.search_cache.insert(key, Arc::new(response.clone())).await;
        }
        Ok(response)
    }

    async fn run_search(&self, plan: &SearchPlan) -> ServiceResult<SearchResponse> {
        let Ranked { mut hits, mode, stages, degraded_reason, candidates } =
            self.ranked(plan, self.vectors.as_ref()).await?;
        if plan.expand_related {
            self.expand_related(plan, &mut hits).await?;
        }
        Ok(SearchResponse { hits, mode, stages, degraded_reason, candidates, cached: false })
    }

    /// The prefilter, vector, lexical and fuzzy stages over one collection. When the embedder is down the
    /// vector stage is skipped: lexical candidates and up to `fuzzy_fallback_scan` prefiltered points are
    /// reranked by fuzzy similarity (the mode says so).
    pub(super) async fn ranked(&self, plan: &SearchPlan, store: &dyn VectorStore) -> ServiceResult<Ranked> {
        let wanted = plan.stages;
        let mut degraded_reason = None;
        let query_vector = if wanted.vector {
            match self.embedder.embed(vec![plan.query.clone()]).await {
                Ok(mut vectors) => Some(vectors.pop().ok_or_else(|| ServiceError::Internal("no query vector".into()))?),
                Err(err) => {
                    tracing::warn!(error = %err, "embedder unavailable; searching without the vector stage");
                    // The cause goes to the log: a backend's message can name hosts and paths.
                    degraded_reason = Some("embedder unavailable (the cause is in the server log)".into());
                    None
                }
            }
        } else {
            None
        };
        let degraded = degraded_reason.is_some();
        let mut pool: Vec<Candidate> = Vec::new();
        let mut ran = Vec::new();
        if let Some(vector) = &query_vector {
            let (hits, path) = search_filled(store, vector.clone(), &plan.filter, plan.candidates).await?;
            if path == SearchPath::ExactFallback {
                self.metrics.search_exact_fallbacks.inc();
            }
            pool.extend(hits.into_iter().map(|h| Candidate {
                context: h.context,
                vector: h.score as f64,
                from_vector: true,
                lexical: None,
            }));
            ran.push(Stage::Vector);
        }
        if wanted.lexical || degraded {
            // Hits on candidates the vector stage found are scored without reading them again.
            let known: std::collections::HashSet<uuid::Uuid> = pool.iter().map(|c| c.context.id).collect();
            let lexical =
                store.lexical_search_beside(&plan.query, &plan.filter, plan.candidates, query_vector.is_some(), &known);
            // The lexical stage only adds candidates: when it fails the answer is ranked without it and
            // says so, rather than failing the search.
            match lexical.await {
                Ok(Some(hits)) => {
                    merge_lexical(&mut pool, hits, query_vector.as_deref());
                    ran.push(Stage::Lexical);
                }
                Ok(None) if !wanted.vector => {
                    degraded_reason.get_or_insert_with(|| {
                        "lexical stage unavailable: the collection predates it (reindex --recreate adds it)".into()
                    });
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "lexical stage failed; ranking without it");
                    self.metrics.search_stage_failures.inc();
                    degraded_reason
                        .get_or_insert_with(|| "lexical stage failed (the cause is in the server log)".into());
                }
            }
        }
        if degraded || (!wanted.vector && !ran.contains(&Stage::Lexical)) {
            // No candidates from the stages: the prefiltered set itself, for the fuzzy stage to rank.
            let known: std::collections::HashSet<uuid::Uuid> = pool.iter().map(|c| c.context.id).collect();
            let scanned = store.scroll(&plan.filter, self.options.fuzzy_fallback_scan).await?;
            pool.extend(scanned.into_iter().filter(|c| !known.contains(&c.id)).map(|context| Candidate {
                context,
                vector: 0.0,
                from_vector: false,
                lexical: None,
            }));
        }
        let fuzzy = wanted.fuzzy || degraded;
        if fuzzy {
            ran.push(Stage::Fuzzy);
        }
        let mode = match (degraded, ran.contains(&Stage::Lexical)) {
            (false, _) => SearchMode::Hybrid,
            (true, true) => SearchMode::LexicalFuzzy,
            (true, false) => SearchMode::FuzzyOnly,
        };
        let candidates = pool.len();
        let stats = if plan.recency_weight > 0.0 || plan.recall_weight > 0.0 {
            let ids: Vec<uuid::Uuid> = pool.iter().map(|c| c.context.id).collect();
            Some(self.graph.recall_stats(&ids).await?)
        } else {
            None
        };
        let scoring = Scoring { vector: ran.contains(&Stage::Vector), lexical: ran.contains(&Stage::Lexical), fuzzy };
        // The rerank is CPU-bound (up to `fuzzy_fallback_scan` texts): it runs on a per-core lane, never on
        // the async workers, so long searches cannot stall other requests.
        let rerank_plan = plan.clone();
        let hits = self.rerank_lanes.run(move || Ok(rerank(&rerank_plan, pool, scoring, stats.as_ref()))).await?;
        Ok(Ranked { hits, mode, stages: ran, degraded_reason, candidates })
    }

    /// Adds each hit's directly related, visible contexts: one graph call for all hits.
    async fn expand_related(&self, plan: &SearchPlan, hits: &mut [SearchHit]) -> ServiceResult<()> {
        let ids: Vec<uuid::Uuid> = hits.iter().map(|h| h.context.id).collect();
        let mut by_hit: HashMap<uuid::Uuid, Vec<RelatedSummary>> = HashMap::new();
        for (start, related) in self.graph.neighbours(&ids, RELATED_PER_HIT, &plan.filter.scope).await? {
            if plan.filter.scope.may_see(&related.context) && !related.context.is_expired(plan.filter.now) {
                let (content, truncated) = preview(related.context.content, RELATED_PREVIEW_CHARS);
                by_hit.entry(start).or_default().push(RelatedSummary {
                    id: related.context.id.to_string(),
                    relation: related.relation,
                    context_type: related.context.context_type,
                    content,
                    truncated,
                });
            }
        }
        for hit in hits.iter_mut() {
            hit.related = by_hit.remove(&hit.context.id).unwrap_or_default();
        }
        Ok(())
    }
}

/// The first `chars` characters of `text`, and whether anything was cut.
fn preview(mut text: String, chars: usize) -> (String, bool) {
    match text.char_indices().nth(chars) {
        Some((end, _)) => {
            text.truncate(end);
            (text, true)
        }
        None => (text, false),
    }
}

/// Adds the lexical stage's hits to the pool: their BM25 score on candidates already there, new candidates
/// for the rest (with their cosine to the query when both are known).
fn merge_lexical(pool: &mut Vec<Candidate>, hits: LexicalHits, query_vector: Option<&[f32]>) {
    let at: HashMap<uuid::Uuid, usize> = pool.iter().enumerate().map(|(i, c)| (c.context.id, i)).collect();
    for (id, score) in hits.known {
        if let Some(&i) = at.get(&id) {
            pool[i].lexical = Some(score as f64);
        }
    }
    for hit in hits.hits {
        match at.get(&hit.context.id) {
            Some(&i) => pool[i].lexical = Some(hit.score as f64),
            None => {
                let vector = match (query_vector, &hit.dense) {
                    (Some(query), Some(dense)) => cosine(query, dense),
                    _ => 0.0,
                };
                pool.push(Candidate {
                    context: hit.context,
                    vector,
                    from_vector: false,
                    lexical: Some(hit.score as f64),
                });
            }
        }
    }
}

/// Which scores count in the final score.
#[derive(Clone, Copy)]
struct Scoring {
    vector: bool,
    lexical: bool,
    fuzzy: bool,
}

/// The fuzzy rerank: keeps the candidates the filter matches and the threshold admits, fuses the scores
/// (with recency and recall when the plan weighs them, from `stats`), and returns the best `limit`, best
/// first.
///
/// The fuzzy score is the costly part (a normalised copy of each text and a token-by-token comparison), and
/// a candidate's final score can exceed its score with a fuzzy score of 0 by a known most: candidates are
/// scored best bound first, and once `limit` hits are in hand, those whose bound is below the worst of
/// them are left unscored. They could not have placed, so the answer is the one scoring every candidate
/// gives.
fn rerank(
    plan: &SearchPlan,
    pool: Vec<Candidate>,
    scoring: Scoring,
    stats: Option<&HashMap<uuid::Uuid, RecallStats>>,
) -> Vec<SearchHit> {
    rerank_pruned(plan, pool, scoring, stats, true)
}

/// The rerank, leaving out the candidates that cannot place when `prune` is set (the tests compare the
/// two).
fn rerank_pruned(
    plan: &SearchPlan,
    pool: Vec<Candidate>,
    scoring: Scoring,
    stats: Option<&HashMap<uuid::Uuid, RecallStats>>,
    prune: bool,
) -> Vec<SearchHit> {
    let fuzzy = scoring.fuzzy.then(|| FuzzyQuery::new(&plan.normalised));
    let best_lexical = pool.iter().filter_map(|c| c.lexical).fold(0.0f64, f64::max);
    let vector_scale = Dbsf::over(pool.iter().filter(|c| c.from_vector).map(|c| c.vector));
    let lexical_scale = Dbsf::over(pool.iter().filter_map(|c| c.lexical));
    let now = Timestamp::now();
    let rest = 1.0 - plan.recency_weight - plan.recall_weight;
    // The final score from the retrieval score, a fuzzy score, and the recency and recall scores.
    let final_score = |retrieval: f64, fuzzy_score: f64, recency: f64, recall: f64| {
        let score = match (fuzzy.is_some(), scoring.vector || scoring.lexical) {
            (true, true) => fuse(retrieval, fuzzy_score, plan.vector_weight),
            (true, false) => fuzzy_score,
            (false, _) => retrieval,
        };
        match stats {
            Some(_) => rest * score + plan.recency_weight * recency + plan.recall_weight * recall,
            None => score,
        }
    };
    let mut ranked: Vec<Ranking> = pool
        .into_iter()
        .filter(|candidate| plan.filter.matches(&candidate.context))
        .enumerate()
        .map(|(order, candidate)| {
            let lexical_scaled = candidate.lexical.map_or(0.0, |raw| lexical_scale.scale(raw));
            let lexical = scoring.lexical.then(|| {
                let raw = candidate.lexical.unwrap_or(0.0);
                if best_lexical > 0.0 { raw / best_lexical } else { 0.0 }
            });
            let retrieval = match (scoring.vector, scoring.lexical) {
                (true, true) => fuse(lexical_scaled, vector_scale.scale(candidate.vector), plan.lexical_weight),
                (true, false) => candidate.vector.clamp(0.0, 1.0),
                (false, true) => lexical.unwrap_or(0.0),
                (false, false) => 0.0,
            };
            let (recency, recall) = match stats {
                Some(stats) => {
                    let known = stats.get(&candidate.context.id);
                    (recency_score(&candidate.context, known, now), recall_score(known))
                }
                None => (0.0, 0.0),
            };
            // The final score is linear in the fuzzy score (0-1), so one end bounds it, whatever the signs of
            // the weights after rounding.
            let bound = final_score(retrieval, 1.0, recency, recall).max(final_score(retrieval, 0.0, recency, recall));
            Ranking { order, candidate, lexical, retrieval, recency, recall, bound }
        })
        .collect();
    ranked.sort_by(|a, b| b.bound.total_cmp(&a.bound));
    // Final scores of the hits so far, the best `limit` of them, lowest first.
    let mut placed: Vec<f64> = Vec::with_capacity(plan.limit + 1);
    let mut hits: Vec<(usize, SearchHit)> = Vec::new();
    for Ranking { order, candidate, lexical, retrieval, recency, recall, bound } in ranked {
        if prune && placed.len() == plan.limit && placed.first().is_some_and(|worst| bound.total_cmp(worst).is_lt()) {
            break;
        }
        let context = candidate.context;
        let fuzzy_score = fuzzy.as_ref().map_or(0.0, |f| f.score_text(&context.content));
        if fuzzy.is_some() && fuzzy_score < plan.fuzzy_threshold {
            continue;
        }
        let score = final_score(retrieval, fuzzy_score, recency, recall);
        placed.insert(placed.partition_point(|p| p.total_cmp(&score).is_lt()), score);
        if placed.len() > plan.limit {
            placed.remove(0);
        }
        let (recency, recall) = if stats.is_some() { (Some(recency), Some(recall)) } else { (None, None) };
        let scores = ScoreBreakdown {
            vector: candidate.vector,
            lexical,
            fuzzy: fuzzy_score,
            final_score: score,
            recency,
            recall,
        };
        hits.push((order, SearchHit { scores, context, related: Vec::new() }));
    }
    // Pool order first, so equal scores keep the order they had when every candidate was scored.
    hits.sort_by_key(|(order, _)| *order);
    let mut hits: Vec<SearchHit> = hits.into_iter().map(|(_, hit)| hit).collect();
    hits.sort_by(|a, b| b.scores.final_score.total_cmp(&a.scores.final_score));
    hits.truncate(plan.limit);
    hits
}

/// A candidate on its way through the rerank: its scores before the fuzzy stage and the best final score
/// it could reach.
struct Ranking {
    /// Its place in the pool.
    order: usize,
    candidate: Candidate,
    lexical: Option<f64>,
    retrieval: f64,
    recency: f64,
    recall: f64,
    bound: f64,
}

/// Distribution-based score scaling: a stage's scores mapped by the mean and standard deviation of its own
/// hits, `mean - 3 sd` to 0 and `mean + 3 sd` to 1, clamped.
#[derive(Debug, Clone, Copy)]
struct Dbsf {
    low: f64,
    width: f64,
}

impl Dbsf {
    fn over(scores: impl Iterator<Item = f64>) -> Self {
        let (mut n, mut sum, mut squares) = (0.0f64, 0.0f64, 0.0f64);
        for score in scores {
            n += 1.0;
            sum += score;
            squares += score * score;
        }
        let mean = if n > 0.0 { sum / n } else { 0.0 };
        let sd = if n > 0.0 { (squares / n - mean * mean).max(0.0).sqrt() } else { 0.0 };
        Self { low: mean - 3.0 * sd, width: 6.0 * sd }
    }

    /// The score on the 0-1 scale; the middle when every hit scored the same.
    fn scale(&self, score: f64) -> f64 {
        if self.width > 1e-12 { ((score - self.low) / self.width).clamp(0.0, 1.0) } else { 0.5 }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{ReadScope, Visibility};

    fn candidate(n: usize, content: String, vector: f64, lexical: Option<f64>) -> Candidate {
        let context = Context {
            id: uuid::Uuid::from_u128(n as u128 + 1),
            session_id: "s".into(),
            agent_id: "a".into(),
            context_type: "note".into(),
            content_hash: crate::domain::content_hash(&content),
            content,
            tags: vec![],
            metadata: Default::default(),
            visibility: Visibility::Public,
            created_at: Timestamp(n as i64 * 60_000),
            updated_at: Timestamp(n as i64 * 60_000),
            version: 1,
            expires_at: None,
        };
        Candidate { context, vector, from_vector: lexical.is_none() || !n.is_multiple_of(3), lexical }
    }

    proptest! {
        /// Leaving out the candidates that cannot place changes nothing: the same hits, scores and order.
        #[test]
        fn pruning_the_rerank_gives_the_answer_scoring_every_candidate_gives(
            words in prop::collection::vec(prop::collection::vec(0usize..8, 1..12), 1..80),
            scores in prop::collection::vec((-1.0f64..1.0, prop::option::of(0.0f64..20.0)), 80),
            limit in 1usize..15,
            fuzzy_threshold in prop_oneof![Just(0.0), 0.0f64..0.6],
            vector_weight in 0.0f64..1.0,
            // Weights that sum to 1 leave the rest at 0 or a rounding error either side of it.
            weights in prop_oneof![
                Just((0.0, 0.0)),
                (0.0f64..0.5, 0.0f64..0.5),
                (0.0f64..1.0).prop_map(|w| (w, 1.0 - w)),
                Just((0.49, 0.5100000000000001)),
            ],
            stages in (any::<bool>(), any::<bool>(), any::<bool>()),
        ) {
            const VOCABULARY: [&str; 8] = ["deploy", "friday", "freeze", "hotfix", "review", "rollback", "db", "cache"];
            let pool = || -> Vec<Candidate> {
                words.iter().zip(&scores).enumerate().map(|(n, (words, &(vector, lexical)))| {
                    let content = words.iter().map(|&w| VOCABULARY[w]).collect::<Vec<_>>().join(" ");
                    candidate(n, content, vector, lexical)
                }).collect()
            };
            let query = "deploy freeze on friday with a review";
            let filter = ContextFilter::parse(
                Default::default(),
                ReadScope { agent_id: "a".into(), admin: true, sessions: None },
                Timestamp(100 * 60_000),
            ).unwrap();
            let plan = SearchPlan {
                query: query.into(),
                normalised: normalise(query),
                filter,
                limit,
                candidates: 80,
                fuzzy_threshold,
                vector_weight,
                lexical_weight: 0.5,
                stages: Stages::ALL,
                expand_related: false,
                recency_weight: weights.0,
                recall_weight: weights.1,
            };
            let scoring = Scoring { vector: stages.0, lexical: stages.1, fuzzy: stages.2 };
            let stats = HashMap::new();
            let stats = (weights != (0.0, 0.0)).then_some(&stats);
            let all = rerank_pruned(&plan, pool(), scoring, stats, false);
            let pruned = rerank_pruned(&plan, pool(), scoring, stats, true);
            let seen = |hits: &[SearchHit]| -> Vec<(uuid::Uuid, ScoreBreakdown)> {
                hits.iter().map(|hit| (hit.context.id, hit.scores.clone())).collect()
            };
            prop_assert_eq!(seen(&pruned), seen(&all));
            prop_assert!(all.len() <= limit);
        }
    }

    #[test]
    fn a_cached_answer_weighs_one_entry_per_4_kib_of_text() {
        let answer = |contents: &[usize]| SearchResponse {
            hits: contents
                .iter()
                .enumerate()
                .map(|(n, len)| SearchHit {
                    context: candidate(n, "x".repeat(*len), 0.5, None).context,
                    scores: ScoreBreakdown {
                        vector: 0.0,
                        lexical: None,
                        fuzzy: 0.0,
                        final_score: 0.0,
                        recency: None,
                        recall: None,
                    },
                    related: Vec::new(),
                })
                .collect(),
            mode: SearchMode::Hybrid,
            stages: vec![Stage::Vector],
            degraded_reason: None,
            candidates: contents.len(),
            cached: false,
        };
        assert_eq!(cache_weight("q", &answer(&[])), 1);
        assert_eq!(cache_weight("q", &answer(&[100, 200])), 1);
        assert_eq!(cache_weight("q", &answer(&[64 * 1024; 200])), 1 + 200 * 16);
        // A large key weighs like the text it is, even with no hit.
        assert_eq!(cache_weight(&"k".repeat(64 * 1024), &answer(&[])), 1 + 16);
    }

    #[test]
    fn dbsf_centres_a_stage_on_its_mean_and_spans_six_deviations() {
        // Mean 0.5, standard deviation 0.1: 0.2 -> 0, 0.5 -> 0.5, 0.8 -> 1.
        let scale = Dbsf::over([0.4, 0.6, 0.4, 0.6].into_iter());
        assert!((scale.scale(0.5) - 0.5).abs() < 1e-9);
        assert!((scale.scale(0.6) - 4.0 / 6.0).abs() < 1e-9);
        assert_eq!(scale.scale(0.2 - 1e-9), 0.0);
        assert_eq!(scale.scale(5.0), 1.0);
        // A narrow band of cosines and a wide band of BM25 scores land on the same scale.
        let cosines = Dbsf::over([0.41, 0.43, 0.45].into_iter());
        let bm25 = Dbsf::over([4.1, 4.3, 4.5].into_iter());
        assert!((cosines.scale(0.45) - bm25.scale(4.5)).abs() < 1e-9);
        // One hit, or hits that all scored the same: the middle, and nothing is divided by zero.
        assert_eq!(Dbsf::over([0.7].into_iter()).scale(0.7), 0.5);
        assert_eq!(Dbsf::over(std::iter::empty()).scale(0.3), 0.5);
    }
}
