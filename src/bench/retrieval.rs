//! The retrieval-quality suite: a set of contexts and questions (JSON Lines, written by
//! `benchmarks/retrieval/prepare.py`) is stored through the service, and every question is searched with
//! each combination of stages; recall@1/5/10 and MRR (over the first 10 hits) are reported per stage
//! combination, on the relevant contexts and on the relevant sessions, and again for the questions with
//! typos added (seeded, so every run asks the same).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::domain::ContextFilterArgs;
use crate::service::{ContextService, CreateSessionRequest, SearchRequest, Stage, StoreContextRequest};

/// One line of a set.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Context {
        id: String,
        session: String,
        text: String,
    },
    Query {
        id: String,
        text: String,
        relevant: Vec<String>,
        #[serde(default)]
        relevant_sessions: Vec<String>,
        #[serde(default)]
        group: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct SetContext {
    pub id: String,
    pub session: String,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct SetQuery {
    pub id: String,
    pub text: String,
    pub relevant: Vec<String>,
    pub relevant_sessions: Vec<String>,
    pub group: String,
}

#[derive(Debug, Clone, Default)]
pub struct RetrievalSet {
    pub contexts: Vec<SetContext>,
    pub queries: Vec<SetQuery>,
}

impl RetrievalSet {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let mut set = Self::default();
        for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str::<Line>(line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), number + 1))?
            {
                Line::Context { id, session, text } => set.contexts.push(SetContext { id, session, text }),
                Line::Query { id, text, relevant, relevant_sessions, group } => set.queries.push(SetQuery {
                    id,
                    text,
                    relevant,
                    relevant_sessions,
                    group: group.unwrap_or_else(|| "all".into()),
                }),
            }
        }
        Ok(set)
    }

    /// The same questions with typos, in group `<group>+typos`.
    pub fn with_typos(&self, seed: u64) -> Vec<SetQuery> {
        self.queries
            .iter()
            .enumerate()
            .map(|(i, query)| SetQuery {
                id: format!("{}~typos", query.id),
                text: add_typos(&query.text, seed + i as u64),
                group: format!("{}+typos", query.group),
                ..query.clone()
            })
            .collect()
    }
}

/// Seeded typos: each word of four letters or more (letters only) gets one with probability 1/4 (an adjacent swap, a
/// dropped or doubled letter, or a neighbouring key), and every question gets at least one.
pub fn add_typos(text: &str, seed: u64) -> String {
    const ROWS: [&str; 3] = ["qwertyuiop", "asdfghjkl", "zxcvbnm"];
    fn neighbour(c: char, rng: &mut fastrand::Rng) -> char {
        let lower = c.to_ascii_lowercase();
        for row in ROWS {
            if let Some(at) = row.find(lower) {
                let row: Vec<char> = row.chars().collect();
                let options: Vec<char> = [at.checked_sub(1), Some(at + 1)]
                    .into_iter()
                    .flatten()
                    .filter_map(|i| row.get(i).copied())
                    .collect();
                return options[rng.usize(..options.len())];
            }
        }
        c
    }
    fn typo(word: &str, rng: &mut fastrand::Rng) -> String {
        let mut chars: Vec<char> = word.chars().collect();
        let at = 1 + rng.usize(..chars.len() - 2);
        match rng.u8(..4) {
            0 => chars.swap(at, at + 1),
            1 => {
                chars.remove(at);
            }
            2 => chars.insert(at, chars[at]),
            _ => chars[at] = neighbour(chars[at], rng),
        }
        chars.into_iter().collect()
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let words: Vec<&str> = text.split(' ').collect();
    // Words of letters only (a word with punctuation stays as it is).
    let long: Vec<usize> = (0..words.len())
        .filter(|&i| words[i].chars().count() >= 4 && words[i].chars().all(char::is_alphabetic))
        .collect();
    let mut chosen: HashSet<usize> = long.iter().copied().filter(|_| rng.u8(..4) == 0).collect();
    if chosen.is_empty() && !long.is_empty() {
        chosen.insert(long[rng.usize(..long.len())]);
    }
    words
        .iter()
        .enumerate()
        .map(|(i, word)| if chosen.contains(&i) { typo(word, &mut rng) } else { word.to_string() })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A combination of stages, as the report names it, with the weights it scores by (None: the service's).
#[derive(Debug, Clone, Serialize)]
pub struct Mode {
    pub name: String,
    pub stages: Vec<Stage>,
    pub vector_weight: Option<f64>,
    pub lexical_weight: Option<f64>,
}

impl Mode {
    fn new(name: &str, stages: &[Stage]) -> Self {
        Self { name: name.into(), stages: stages.to_vec(), vector_weight: None, lexical_weight: None }
    }
}

/// The combinations the suite compares.
pub fn modes() -> Vec<Mode> {
    vec![
        Mode::new("dense", &[Stage::Vector]),
        Mode::new("lexical", &[Stage::Lexical]),
        Mode::new("fused", &[Stage::Vector, Stage::Lexical]),
        Mode::new("dense+fuzzy", &[Stage::Vector, Stage::Fuzzy]),
        Mode::new("pipeline", &[Stage::Vector, Stage::Lexical, Stage::Fuzzy]),
    ]
}

/// The full pipeline over a grid of weights, to choose the defaults.
pub fn weight_grid() -> Vec<Mode> {
    let mut modes = Vec::new();
    for vector_weight in [0.7, 0.85, 1.0] {
        for lexical_weight in [0.3, 0.5, 0.6, 0.7, 0.8] {
            modes.push(Mode {
                name: format!("pipeline v{vector_weight} l{lexical_weight}"),
                stages: vec![Stage::Vector, Stage::Lexical, Stage::Fuzzy],
                vector_weight: Some(vector_weight),
                lexical_weight: Some(lexical_weight),
            });
        }
    }
    modes
}

/// Recall at 1, 5 and 10 and the mean reciprocal rank (0 past 10) of one mode on one group of questions.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Scores {
    pub recall_1: f64,
    pub recall_5: f64,
    pub recall_10: f64,
    pub mrr: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub mode: String,
    pub group: String,
    pub questions: usize,
    /// A hit is a relevant context.
    pub contexts: Scores,
    /// A hit is any context of a relevant session ("which session was it in").
    pub sessions: Scores,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub contexts: usize,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn row(&self, mode: &str, group: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.mode == mode && r.group == group)
    }

    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| mode | questions | group | R@1 | R@5 | R@10 | MRR | session R@1 | session R@5 | session R@10 | session MRR |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for row in &self.rows {
            let (c, s) = (row.contexts, row.sessions);
            out.push_str(&format!(
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
                row.mode,
                row.questions,
                row.group,
                c.recall_1,
                c.recall_5,
                c.recall_10,
                c.mrr,
                s.recall_1,
                s.recall_5,
                s.recall_10,
                s.mrr
            ));
        }
        out
    }
}

/// Per question of a group: the rank of the first relevant context, and of the first relevant session's.
type GroupRanks = (Vec<Option<usize>>, Vec<Option<usize>>);

/// The rank (1-based) of the first hit that counts, among the first 10.
fn first_rank(hits: &[bool]) -> Option<usize> {
    hits.iter().take(10).position(|&hit| hit).map(|i| i + 1)
}

fn score(ranks: &[Option<usize>]) -> Scores {
    let n = ranks.len().max(1) as f64;
    let within = |k: usize| ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64 / n;
    Scores {
        recall_1: within(1),
        recall_5: within(5),
        recall_10: within(10),
        mrr: ranks.iter().map(|r| r.map_or(0.0, |r| 1.0 / r as f64)).sum::<f64>() / n,
    }
}

/// A session id the service takes (the sets' ids are already close).
fn session_id(name: &str) -> String {
    let id: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.:".contains(c) { c } else { '_' }).take(100).collect();
    format!("r-{id}")
}

/// Stores the set's contexts (16 at a time) in sessions named after the set's; returns the context id of
/// each set id (identical texts in one session share a context).
pub async fn load_into(service: &ContextService, set: &RetrievalSet) -> anyhow::Result<HashMap<String, String>> {
    let admin = Principal::admin("retrieval");
    let sessions: HashSet<&str> = set.contexts.iter().map(|c| c.session.as_str()).collect();
    for session in sessions {
        let request = CreateSessionRequest {
            id: Some(session_id(session)),
            purpose: format!("retrieval set session {session}"),
            ..Default::default()
        };
        service.create_session(&admin, request).await.map_err(|e| anyhow::anyhow!(e.to_string()))?;
    }
    let stored = futures::stream::iter(set.contexts.iter().map(|context| {
        let admin = admin.clone();
        async move {
            let request = StoreContextRequest {
                session_id: session_id(&context.session),
                content: context.text.chars().take(8000).collect(),
                ..Default::default()
            };
            let stored = service.store_context(&admin, request).await.map_err(|e| anyhow::anyhow!(e.to_string()))?;
            Ok::<_, anyhow::Error>((context.id.clone(), stored.context.id.to_string()))
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    stored.into_iter().collect()
}

/// Asks every question (and its typo'd twin) with every mode; `limit` hits each.
pub async fn evaluate(
    service: &ContextService,
    set: &RetrievalSet,
    ids: &HashMap<String, String>,
    modes: &[Mode],
) -> anyhow::Result<Report> {
    let admin = Principal::admin("retrieval");
    let mut questions = set.queries.clone();
    // A set that brings its own misspelt questions is asked as it is.
    if !questions.iter().any(|q| q.group.contains("typos")) {
        questions.extend(set.with_typos(7));
    }
    let session_of: HashMap<&str, &str> = set.contexts.iter().map(|c| (c.id.as_str(), c.session.as_str())).collect();
    let mut session_by_context: HashMap<String, String> = HashMap::new();
    for (set_id, context_id) in ids {
        if let Some(session) = session_of.get(set_id.as_str()) {
            session_by_context.insert(context_id.clone(), session_id(session));
        }
    }
    let mut groups: Vec<String> = questions.iter().map(|q| q.group.clone()).collect();
    groups.sort();
    groups.dedup();
    let mut rows = Vec::new();
    for mode in modes {
        let mut ranks: HashMap<String, GroupRanks> = HashMap::new();
        for question in &questions {
            let request = SearchRequest {
                query: question.text.chars().take(crate::domain::limits::MAX_QUERY_CHARS).collect(),
                filter: ContextFilterArgs::default(),
                limit: Some(10),
                stages: Some(mode.stages.clone()),
                vector_weight: mode.vector_weight,
                lexical_weight: mode.lexical_weight,
                ..Default::default()
            };
            let found = service.search(&admin, request).await.map_err(|e| anyhow::anyhow!(e.to_string()))?;
            let relevant: HashSet<&String> = question.relevant.iter().filter_map(|id| ids.get(id)).collect();
            let sessions: HashSet<String> = question.relevant_sessions.iter().map(|s| session_id(s)).collect();
            let hit_ids: Vec<String> = found.hits.iter().map(|h| h.context.id.to_string()).collect();
            let context_hits: Vec<bool> = hit_ids.iter().map(|id| relevant.contains(id)).collect();
            let session_hits: Vec<bool> = hit_ids
                .iter()
                .map(|id| session_by_context.get(id).is_some_and(|session| sessions.contains(session)))
                .collect();
            let entry = ranks.entry(question.group.clone()).or_default();
            entry.0.push(first_rank(&context_hits));
            entry.1.push(first_rank(&session_hits));
        }
        for group in &groups {
            if let Some((contexts, sessions)) = ranks.get(group) {
                rows.push(Row {
                    mode: mode.name.clone(),
                    group: group.clone(),
                    questions: contexts.len(),
                    contexts: score(contexts),
                    sessions: score(sessions),
                });
            }
        }
    }
    Ok(Report { contexts: ids.len(), rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_seeded_and_touch_every_question() {
        let question = "What did I decide about the retry policy for uploads?";
        assert_eq!(add_typos(question, 3), add_typos(question, 3));
        assert_ne!(add_typos(question, 3), question);
        assert_eq!(add_typos("a b c", 1), "a b c", "nothing long enough to misspell");
    }

    #[test]
    fn ranks_become_recall_and_mrr() {
        let scores = score(&[Some(1), Some(3), None, Some(7)]);
        assert_eq!((scores.recall_1, scores.recall_5, scores.recall_10), (0.25, 0.5, 0.75));
        assert!((scores.mrr - (1.0 + 1.0 / 3.0 + 1.0 / 7.0) / 4.0).abs() < 1e-12);
        assert_eq!(first_rank(&[false, false, true]), Some(3));
    }
}
