//! Checks analysts' Cypher before it reaches Neo4j. The READ transaction already refuses writes; this check
//! refuses what a READ transaction still allows and an analyst must not do: `LOAD CSV` (it reads files on
//! the database host and fetches URLs), procedures outside a short list of read-only schema procedures
//! (`dbms.*` reveals the server, APOC can read files), `USE` (another database, e.g. `system`) and
//! administration commands. Write clauses are refused here too, with a clearer message than the server's.
//!
//! The check works on tokens lexed the way Neo4j lexes them, not on raw text: comments (`//` up to a line
//! break, `\n` or `\r`; `/* */`) and string literals are skipped, names may hold `$` after their first
//! character, and a backquoted name is a name (checked against the APOC and procedure rules) but never a
//! keyword. A word counts as a keyword only where a clause can start: not after `.` or `:` (a property or
//! a label) and not as a map key, so `n.set` or a label `:Load` are fine. A parameter named like a refused
//! keyword (`$create`) is refused too: the check errs on the side of refusing.

/// Procedures an analyst may `CALL`: read-only schema introspection of the database in use.
const PROCEDURES: &[&str] = &[
    "db.labels",
    "db.relationshiptypes",
    "db.propertykeys",
    "db.schema.nodetypeproperties",
    "db.schema.reltypeproperties",
    "db.schema.visualization",
];

/// Clauses and commands that write or administer: refused before the server sees them.
const REFUSED_KEYWORDS: &[&str] = &[
    "create",
    "merge",
    "delete",
    "detach",
    "set",
    "remove",
    "foreach",
    "drop",
    "alter",
    "rename",
    "grant",
    "deny",
    "revoke",
    "show",
    "terminate",
    "use",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An unquoted name or keyword, lower-cased.
    Word(String),
    /// A backquoted name, lower-cased: a name, never a keyword.
    Name(String),
    /// A string literal.
    Text,
    Punct(char),
}

/// Characters Neo4j allows inside a name after its first one, besides letters, digits and `_`.
fn name_part(c: char) -> bool {
    c.is_alphanumeric()
        || c == '_'
        || c == '$'
        || matches!(c, '\u{0}'..='\u{8}' | '\u{e}'..='\u{1b}' | '\u{7f}'..='\u{9f}')
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' && chars[i] != '\r' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            if i >= chars.len() {
                return Err("the query has an unterminated comment".into());
            }
            i += 2;
        } else if c == '\'' || c == '"' || c == '`' {
            let start = i + 1;
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("the query has an unterminated string or quoted name".into()),
                    Some('\\') if c != '`' => i += 2,
                    Some(&q) if q == c => {
                        // A doubled quote inside a backquoted name (or string) is an escaped quote.
                        if chars.get(i + 1) == Some(&c) {
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(_) => i += 1,
                }
            }
            if c == '`' {
                let name: String = chars[start..i - 1].iter().collect();
                found.push(Token::Name(name.replace("``", "`").to_lowercase()));
            } else {
                found.push(Token::Text);
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && name_part(chars[i]) {
                i += 1;
            }
            found.push(Token::Word(chars[start..i].iter().collect::<String>().to_lowercase()));
        } else {
            found.push(Token::Punct(c));
            i += 1;
        }
    }
    Ok(found)
}

/// Whether the word at `at` stands where a keyword can: not a property, label, parameter or map key.
fn keyword_position(tokens: &[Token], at: usize) -> bool {
    let after_qualifier = at > 0 && matches!(tokens[at - 1], Token::Punct('.' | ':'));
    let map_key = matches!(tokens.get(at + 1), Some(Token::Punct(':')));
    !after_qualifier && !map_key
}

/// The dotted name starting at `at` (`db.schema.visualization`), lower-cased.
fn dotted_name(tokens: &[Token], mut at: usize) -> String {
    let mut name = String::new();
    while let Some(Token::Word(part) | Token::Name(part)) = tokens.get(at) {
        name.push_str(part);
        if tokens.get(at + 1) == Some(&Token::Punct('.')) {
            name.push('.');
            at += 2;
        } else {
            break;
        }
    }
    name
}

/// `Ok` when the query may run as an analyst query; otherwise the reason, for the caller.
pub fn check(query: &str) -> Result<(), String> {
    let tokens = tokens(query)?;
    for (at, token) in tokens.iter().enumerate() {
        if let Token::Word(name) | Token::Name(name) = token
            && name == "apoc"
            && tokens.get(at + 1) == Some(&Token::Punct('.'))
        {
            return Err("APOC procedures and functions are not available to analyst queries".into());
        }
        let Token::Word(word) = token else { continue };
        if !keyword_position(&tokens, at) {
            continue;
        }
        match word.as_str() {
            "load" if matches!(tokens.get(at + 1), Some(Token::Word(next)) if next == "csv") => {
                return Err("LOAD CSV is not available to analyst queries".into());
            }
            "call" => match tokens.get(at + 1) {
                // CALL { ... } and CALL (x) { ... } are subqueries.
                Some(Token::Punct('{' | '(')) => {}
                Some(Token::Word(_) | Token::Name(_)) => {
                    let name = dotted_name(&tokens, at + 1);
                    if !PROCEDURES.contains(&name.as_str()) {
                        return Err(format!(
                            "CALL {name} is not available to analyst queries (allowed: {})",
                            PROCEDURES.join(", ")
                        ));
                    }
                }
                _ => return Err("CALL must name an allowed procedure or open a subquery".into()),
            },
            keyword if REFUSED_KEYWORDS.contains(&keyword) => {
                return Err(format!(
                    "{} is not available to analyst queries: they only read (MATCH, WITH, UNWIND, RETURN, ...)",
                    keyword.to_uppercase()
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn reading_queries_pass() {
        for query in [
            "MATCH (c:Context) WHERE NOT c.deleted RETURN count(c) AS n",
            "MATCH (c:Context {agent_id: $author}) RETURN c.content AS content ORDER BY content",
            "MATCH (n) WHERE n.set = 1 AND n.create IS NULL RETURN n.load AS load",
            "MATCH (n:Load) RETURN {set: 1, delete: 2} AS m",
            "RETURN 'LOAD CSV FROM \"file:///etc/passwd\"' AS text // CALL dbms.components()",
            "CALL db.labels() YIELD label RETURN label",
            "CALL { MATCH (c:Context) RETURN c } RETURN count(c) AS n",
            "MATCH (`create`:Context) RETURN `create`.id AS id",
            "UNWIND range(1, 10) AS i /* DELETE */ RETURN i",
            "CALL `db`.`labels`() YIELD label RETURN label",
            "WITH 1 AS x$y RETURN x$y",
        ] {
            assert_eq!(check(query), Ok(()), "{query}");
        }
    }

    #[test]
    fn files_procedures_other_databases_and_writes_are_refused() {
        for query in [
            "LOAD CSV FROM \"file:///etc/hostname\" AS row RETURN row",
            "load   csv with headers from 'http://x' as r return r",
            "CALL dbms.components()",
            "CALL db.index.fulltext.queryNodes('x', 'y')",
            "CALL apoc.load.json('file:///etc/passwd')",
            "RETURN apoc.text.join(['a'], ',') AS x",
            "USE system SHOW USERS",
            "SHOW DATABASES",
            "MATCH (c:Context) DETACH DELETE c",
            "MATCH (c) SET c.x = 1",
            "CREATE (n:Evil)",
            "MERGE (n:Evil {id: 1})",
            "MATCH (n) FOREACH (x IN [1] | SET n.y = x)",
            "WITH 1 AS a //\rLOAD CSV FROM 'http://169.254.169.254/' AS l RETURN l",
            "WITH 1 AS x$ LOAD CSV FROM 'file:///etc/hostname' AS l RETURN l",
            "WITH 1 AS x$ CALL dbms.listConfig() YIELD name RETURN name",
            "RETURN `apoc`.cypher.runFirstColumnMany('LOAD CSV FROM \"x\" AS r RETURN r', {}) AS x",
            "CALL `dbms`.components()",
            "CALL `dbms.components`()",
            "MATCH (n) WHERE n.x = $p LOAD CSV FROM 'file:///etc/hostname' AS l RETURN l",
            "RETURN 'unterminated",
            "MATCH (n) /* unterminated",
        ] {
            assert!(check(query).is_err(), "{query}");
        }
    }
}
