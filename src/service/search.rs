//! Search: prefilter -> vector stage -> fuzzy rerank -> optional graph expansion, with a result cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::recalls::{recall_score, recency_score};
use super::{ContextService, RelatedSummary, ScoreBreakdown, SearchHit, SearchMode, SearchRequest, SearchResponse};
use crate::auth::{Permission, Principal};
use crate::domain::{Context, ContextFilter, Timestamp, limits, parse_limit};
use crate::error::{ServiceError, ServiceResult};
use crate::search::rerank::{FuzzyQuery, fuse, normalise};
use crate::store::VectorStore;
use crate::store::graph::RecallStats;
use crate::store::vector::{SearchPath, search_filled};

/// Related contexts shown per search hit at most.
const RELATED_PER_HIT: usize = 10;

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

/// What the vector and fuzzy stages found, before any graph expansion.
pub(super) struct Ranked {
    pub hits: Vec<SearchHit>,
    pub mode: SearchMode,
    pub degraded_reason: Option<String>,
    pub candidates: usize,
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
        let candidates = candidates.unwrap_or((4 * limit).max(40));
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
            expand_related: false,
            recency_weight: 0.0,
            recall_weight: 0.0,
        })
    }

    fn cache_key(&self, plan: &SearchPlan) -> String {
        let mut filter = plan.filter.clone();
        filter.now = Timestamp(0);
        format!(
            "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.generation.load(Ordering::SeqCst),
            serde_json::to_string(&filter).unwrap_or_default(),
            plan.query,
            plan.limit,
            plan.candidates,
            plan.fuzzy_threshold,
            plan.vector_weight,
            plan.expand_related,
            plan.recency_weight,
            plan.recall_weight
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
        // A degraded answer is not cached: the next call should try the embedder again.
        if caching && response.mode == SearchMode::Hybrid {
            self.search_cache.insert(key, Arc::new(response.clone())).await;
        }
        Ok(response)
    }

    async fn run_search(&self, plan: &SearchPlan) -> ServiceResult<SearchResponse> {
        let Ranked { mut hits, mode, degraded_reason, candidates } = self.ranked(plan, self.vectors.as_ref()).await?;
        if plan.expand_related {
            self.expand_related(plan, &mut hits).await?;
        }
        Ok(SearchResponse { hits, mode, degraded_reason, candidates, cached: false })
    }

    /// The prefilter, vector and fuzzy stages over one collection: the nearest points that pass the filter,
    /// reranked; by fuzzy similarity alone over the prefiltered points when the embedder is down.
    pub(super) async fn ranked(&self, plan: &SearchPlan, store: &dyn VectorStore) -> ServiceResult<Ranked> {
        let (mode, degraded_reason, scored) = match self.embedder.embed(vec![plan.query.clone()]).await {
            Ok(mut vectors) => {
                let vector = vectors.pop().ok_or_else(|| ServiceError::Internal("no query vector".into()))?;
                let (hits, path) = search_filled(store, vector, &plan.filter, plan.candidates).await?;
                if path == SearchPath::ExactFallback {
                    self.metrics.search_exact_fallbacks.inc();
                }
                let scored: Vec<(Context, f64)> = hits.into_iter().map(|h| (h.context, h.score as f64)).collect();
                (SearchMode::Hybrid, None, scored)
            }
            Err(err) => {
                tracing::warn!(error = %err, "embedder unavailable; searching by fuzzy similarity only");
                let contexts = store.scroll(&plan.filter, self.options.fuzzy_fallback_scan).await?;
                let scored = contexts.into_iter().map(|c| (c, 0.0)).collect();
                (SearchMode::FuzzyOnly, Some(format!("embedder unavailable: {err}")), scored)
            }
        };
        let candidates = scored.len();
        let vector_weight = if mode == SearchMode::FuzzyOnly { 0.0 } else { plan.vector_weight };
        let stats = if plan.recency_weight > 0.0 || plan.recall_weight > 0.0 {
            let ids: Vec<uuid::Uuid> = scored.iter().map(|(context, _)| context.id).collect();
            Some(self.graph.recall_stats(&ids).await?)
        } else {
            None
        };
        // The rerank is CPU-bound (up to `fuzzy_fallback_scan` texts): it runs on a per-core lane, never on
        // the async workers, so long searches cannot stall other requests.
        let rerank_plan = plan.clone();
        let hits =
            self.rerank_lanes.run(move || Ok(rerank(&rerank_plan, scored, vector_weight, stats.as_ref()))).await?;
        Ok(Ranked { hits, mode, degraded_reason, candidates })
    }

    /// Adds each hit's directly related, visible contexts: one graph call for all hits.
    async fn expand_related(&self, plan: &SearchPlan, hits: &mut [SearchHit]) -> ServiceResult<()> {
        let ids: Vec<uuid::Uuid> = hits.iter().map(|h| h.context.id).collect();
        let mut by_hit: HashMap<uuid::Uuid, Vec<RelatedSummary>> = HashMap::new();
        for (start, related) in self.graph.neighbours(&ids, RELATED_PER_HIT, &plan.filter.scope).await? {
            if plan.filter.scope.may_see(&related.context) && !related.context.is_expired(plan.filter.now) {
                by_hit.entry(start).or_default().push(RelatedSummary {
                    id: related.context.id.to_string(),
                    relation: related.relation,
                    context_type: related.context.context_type,
                    content: related.context.content,
                });
            }
        }
        for hit in hits.iter_mut() {
            hit.related = by_hit.remove(&hit.context.id).unwrap_or_default();
        }
        Ok(())
    }
}

/// The fuzzy rerank: keeps the candidates the filter matches and the threshold admits, fuses the scores
/// (with recency and recall when the plan weighs them, from `stats`), and returns the best `limit`, best
/// first.
fn rerank(
    plan: &SearchPlan,
    scored: Vec<(Context, f64)>,
    vector_weight: f64,
    stats: Option<&HashMap<uuid::Uuid, RecallStats>>,
) -> Vec<SearchHit> {
    let fuzzy = FuzzyQuery::new(&plan.normalised);
    let now = Timestamp::now();
    let mut hits: Vec<SearchHit> = scored
        .into_iter()
        .filter(|(context, _)| plan.filter.matches(context))
        .filter_map(|(context, vector)| {
            let fuzzy_score = fuzzy.score(&normalise(&context.content));
            if fuzzy_score < plan.fuzzy_threshold {
                return None;
            }
            let mut scores = ScoreBreakdown {
                vector,
                fuzzy: fuzzy_score,
                final_score: fuse(vector, fuzzy_score, vector_weight),
                recency: None,
                recall: None,
            };
            if let Some(stats) = stats {
                let known = stats.get(&context.id);
                let recency = recency_score(&context, known, now);
                let recall = recall_score(known);
                let rest = 1.0 - plan.recency_weight - plan.recall_weight;
                scores.final_score =
                    rest * scores.final_score + plan.recency_weight * recency + plan.recall_weight * recall;
                scores.recency = Some(recency);
                scores.recall = Some(recall);
            }
            Some(SearchHit { scores, context, related: Vec::new() })
        })
        .collect();
    hits.sort_by(|a, b| b.scores.final_score.total_cmp(&a.scores.final_score));
    hits.truncate(plan.limit);
    hits
}
