//! What a statement does, decided from DataFusion's own parser before it
//! runs: whether it changes the shared catalog (which must then be
//! persisted), writes files (which must be staged), or only reads.

use std::collections::VecDeque;

use datafusion::error::DataFusionError;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{ObjectType, Statement as SqlStatement, TableObject};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One catalog entry as it is persisted: the statement that recreates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    pub name: String,
    /// `CREATE EXTERNAL TABLE ...` or `CREATE VIEW ...`, as the user wrote it.
    pub ddl: String,
}

/// A `CACHE TABLE` as it is persisted, so that a restarted coordinator
/// caches the table again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheDef {
    pub name: String,
    /// The `AS SELECT` query of a table that exists only cached; none for
    /// a cached catalog table.
    pub query: Option<String>,
}

/// A change to the shared catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogChange {
    /// `CREATE EXTERNAL TABLE` or `CREATE VIEW`.
    Create { def: TableDef, or_replace: bool, if_not_exists: bool },
    /// `DROP TABLE` or `DROP VIEW`.
    Drop { name: String, if_exists: bool },
}

/// What a statement does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Statement {
    Catalog(CatalogChange),
    /// `COPY ... TO`: writes files outside the catalog.
    Copy,
    /// `INSERT INTO t ...`: adds files to a table.
    Insert {
        table: String,
    },
    /// `CACHE TABLE t` (t's rows into the stores' memory), or `CACHE
    /// TABLE t AS SELECT ...` (a new table held only there).
    Cache {
        table: String,
        query: Option<String>,
    },
    /// `UNCACHE TABLE [IF EXISTS] t`.
    Uncache {
        table: String,
        if_exists: bool,
    },
    /// Reads only: SELECT, SHOW, DESCRIBE, EXPLAIN, SET.
    Query,
}

impl Statement {
    pub fn writes(&self) -> bool {
        matches!(self, Statement::Copy | Statement::Insert { .. })
    }
}

fn parse(sql: &str) -> Result<VecDeque<DfStatement>> {
    DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).map_err(Error::DataFusion)
}

/// Splits a script into its statements (without the `;`), using
/// DataFusion's tokenizer so that a `;` inside a string or a comment
/// does not split. Empty statements are dropped.
pub fn split_statements(script: &str) -> Result<Vec<String>> {
    let tokens = Tokenizer::new(&GenericDialect {}, script)
        .tokenize_with_location()
        .map_err(|e| Error::DataFusion(DataFusionError::SQL(Box::new(e.into()), None)))?;
    let line_starts: Vec<usize> = std::iter::once(0).chain(script.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let offset = |line: u64, column: u64| -> usize {
        let start = line_starts.get(line.saturating_sub(1) as usize).copied().unwrap_or(script.len());
        script[start..].char_indices().nth(column.saturating_sub(1) as usize).map_or(script.len(), |(i, _)| start + i)
    };
    let mut statements = Vec::new();
    let mut from = 0;
    for t in tokens.iter().filter(|t| t.token == Token::SemiColon) {
        let at = offset(t.span.start.line, t.span.start.column);
        statements.push(script[from..at].to_string());
        from = at + 1;
    }
    statements.push(script[from..].to_string());
    Ok(statements.into_iter().filter(|s| !is_blank(s)).map(|s| s.trim().to_string()).collect())
}

/// Only whitespace and comments.
fn is_blank(sql: &str) -> bool {
    Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map(|tokens| tokens.iter().all(|t| matches!(t, Token::Whitespace(_) | Token::EOF)))
        .unwrap_or(false)
}

/// How deep one expression may nest (`1 + 1 + ...` with this many
/// operators). DataFusion clones, prints and drops expressions
/// recursively: deeper ones would overflow a thread's stack and take the
/// process down with every query in it, where they are now refused.
pub const MAX_EXPRESSION_DEPTH: usize = 2_000;

/// Refuses a statement with an expression nested deeper than
/// [`MAX_EXPRESSION_DEPTH`], from its tokens alone (no parse tree is built,
/// so a statement of any depth is safe to check). An expression's depth is
/// at most its operators, counted from the last `,` or clause keyword at
/// each parenthesis level, plus one per enclosing parenthesis.
pub fn check_expression_depth(sql: &str) -> Result<()> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return Ok(()); // the parser reports it, with its position
    };
    let mut levels: Vec<usize> = vec![0];
    let mut deepest = 0;
    for token in &tokens {
        let current = levels.last_mut().expect("the outermost level stays");
        match token {
            Token::LParen | Token::LBracket => levels.push(0),
            Token::RParen | Token::RBracket => {
                let inner = if levels.len() > 1 { levels.pop().unwrap_or(0) } else { 0 };
                *levels.last_mut().expect("the outermost level stays") += inner + 1;
            }
            Token::Comma | Token::SemiColon => *current = 0,
            Token::Word(w) => match w.keyword {
                Keyword::AND | Keyword::OR | Keyword::NOT | Keyword::LIKE | Keyword::ILIKE | Keyword::IS => {
                    *current += 1
                }
                Keyword::SELECT
                | Keyword::FROM
                | Keyword::WHERE
                | Keyword::GROUP
                | Keyword::HAVING
                | Keyword::ORDER
                | Keyword::LIMIT
                | Keyword::ON
                | Keyword::JOIN
                | Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT
                | Keyword::CASE
                | Keyword::WHEN
                | Keyword::THEN
                | Keyword::ELSE
                | Keyword::END
                | Keyword::AS
                | Keyword::VALUES
                | Keyword::SET => *current = 0,
                _ => {}
            },
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::DuckIntDiv
            | Token::StringConcat
            | Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Spaceship
            | Token::Ampersand
            | Token::Pipe
            | Token::Caret
            | Token::ShiftLeft
            | Token::ShiftRight
            | Token::DoubleColon
            | Token::Arrow
            | Token::LongArrow => *current += 1,
            _ => {}
        }
        deepest = deepest.max(levels.iter().sum::<usize>());
        if deepest > MAX_EXPRESSION_DEPTH {
            return Err(Error::Invalid(format!(
                "an expression nests more than {MAX_EXPRESSION_DEPTH} operators deep; split it (a long `OR` \
                 chain reads as `IN (...)`, a long `+` chain as a sum over rows)"
            )));
        }
    }
    Ok(())
}

/// Decides what one statement does. Statements whose effect would live
/// only in one process's memory (CREATE TABLE, CREATE SCHEMA, ...) are
/// refused, since the catalog could not keep them.
pub fn classify(sql: &str) -> Result<Statement> {
    check_expression_depth(sql)?;
    // sqlparser reads whatever follows `CACHE TABLE t` as its query, a `;` too.
    let mut statements = parse(sql.trim().trim_end_matches(';'))?;
    if statements.len() != 1 {
        return Err(Error::Invalid(format!(
            "expected one statement, got {}; send statements one at a time",
            statements.len()
        )));
    }
    let statement = statements.pop_front().expect("one statement");
    let def = |name: String| TableDef { name, ddl: sql.trim().trim_end_matches(';').trim().to_string() };
    Ok(match statement {
        DfStatement::CreateExternalTable(c) => {
            if c.temporary {
                return Err(Error::Invalid("temporary tables are not supported: the catalog is shared".into()));
            }
            for location in &c.locations {
                check_location(location)?;
            }
            Statement::Catalog(CatalogChange::Create {
                def: def(c.name.to_string()),
                or_replace: c.or_replace,
                if_not_exists: c.if_not_exists,
            })
        }
        DfStatement::CopyTo(copy) => {
            check_location(&copy.target)?;
            Statement::Copy
        }
        DfStatement::Statement(s) => match *s {
            SqlStatement::CreateView(v) => {
                if v.temporary || v.materialized {
                    return Err(Error::Invalid("only plain views are supported (no TEMPORARY or MATERIALIZED)".into()));
                }
                Statement::Catalog(CatalogChange::Create {
                    def: def(v.name.to_string()),
                    or_replace: v.or_replace,
                    if_not_exists: v.if_not_exists,
                })
            }
            SqlStatement::Drop { object_type: ObjectType::Table | ObjectType::View, if_exists, names, .. } => {
                let [name] = names.as_slice() else {
                    return Err(Error::Invalid("DROP one table or view at a time".into()));
                };
                Statement::Catalog(CatalogChange::Drop { name: name.to_string(), if_exists })
            }
            SqlStatement::Insert(insert) => match insert.table {
                TableObject::TableName(name) => Statement::Insert { table: name.to_string() },
                TableObject::TableFunction(_) | TableObject::TableQuery(_) => {
                    return Err(Error::Invalid("INSERT INTO names a table".into()));
                }
            },
            SqlStatement::CreateTable(_) => {
                return Err(Error::Invalid(
                    "CREATE TABLE would keep rows in one process's memory; write files with COPY ... TO \
                     and declare them with CREATE EXTERNAL TABLE"
                        .into(),
                ));
            }
            SqlStatement::Cache { table_flag, table_name, options, query, .. } => {
                if table_flag.is_some() || !options.is_empty() {
                    return Err(Error::Invalid("CACHE TABLE takes no flags or OPTIONS here".into()));
                }
                Statement::Cache { table: table_name.to_string(), query: query.map(|q| q.to_string()) }
            }
            SqlStatement::UNCache { table_name, if_exists } => {
                Statement::Uncache { table: table_name.to_string(), if_exists }
            }
            SqlStatement::CreateSchema { .. }
            | SqlStatement::CreateDatabase { .. }
            | SqlStatement::CreateFunction(_)
            | SqlStatement::Drop { .. } => {
                return Err(Error::Invalid(
                    "only tables and views can be created or dropped in Cohort's catalog".into(),
                ));
            }
            _ => Statement::Query,
        },
        DfStatement::Explain(_) | DfStatement::Reset(_) => Statement::Query,
    })
}

/// Whether two statements define the same thing, however spelled
/// (`OR REPLACE` and `IF NOT EXISTS` aside).
pub fn same_definition(a: &str, b: &str) -> bool {
    fn normalized(sql: &str) -> Option<Vec<String>> {
        let mut statements = parse(sql).ok()?;
        for statement in statements.iter_mut() {
            match statement {
                DfStatement::CreateExternalTable(c) => {
                    c.or_replace = false;
                    c.if_not_exists = false;
                }
                DfStatement::Statement(s) => {
                    if let SqlStatement::CreateView(v) = s.as_mut() {
                        v.or_replace = false;
                        v.if_not_exists = false;
                    }
                }
                _ => {}
            }
        }
        Some(statements.iter().map(ToString::to_string).collect())
    }
    normalized(a).is_some_and(|a| Some(a) == normalized(b))
}

/// Cluster hosts resolve paths, not the client: a relative path would
/// mean something different on each.
fn check_location(location: &str) -> Result<()> {
    let is_url = location.split_once("://").is_some_and(|(scheme, _)| !scheme.is_empty());
    if !is_url && !location.starts_with('/') {
        return Err(Error::Invalid(format!(
            "location '{location}' is relative; the cluster's hosts resolve it, so give an absolute path \
             (or a URL such as s3://bucket/path/)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_split_on_semicolons_outside_strings_and_comments() {
        let script = "SELECT 'a;b';\n-- c; d\nSELECT 2 /* ; */ ;\n\n  ;  -- only a comment\n";
        assert_eq!(split_statements(script).unwrap(), vec!["SELECT 'a;b'", "-- c; d\nSELECT 2 /* ; */"]);
        assert_eq!(split_statements("SELECT 'é';SELECT 1").unwrap(), vec!["SELECT 'é'", "SELECT 1"]);
    }

    #[test]
    fn statements_are_classified_by_their_effect() {
        let create = classify("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/data/t/';").unwrap();
        assert!(matches!(create, Statement::Catalog(CatalogChange::Create { ref def, .. })
            if def.name == "t" && def.ddl == "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/data/t/'"));
        assert_eq!(
            classify("DROP TABLE IF EXISTS t").unwrap(),
            Statement::Catalog(CatalogChange::Drop { name: "t".into(), if_exists: true })
        );
        assert_eq!(classify("INSERT INTO t SELECT 1").unwrap(), Statement::Insert { table: "t".into() });
        assert_eq!(classify("COPY (SELECT 1) TO '/tmp/x/' STORED AS PARQUET").unwrap(), Statement::Copy);
        assert_eq!(classify("SELECT * FROM t").unwrap(), Statement::Query);
        assert_eq!(classify("SHOW TABLES").unwrap(), Statement::Query);
        assert!(matches!(classify("CREATE VIEW v AS SELECT 1").unwrap(), Statement::Catalog(_)));
        assert_eq!(classify("CACHE TABLE t;").unwrap(), Statement::Cache { table: "t".into(), query: None });
        assert_eq!(
            classify("cache table hot as select k from t where k > 1").unwrap(),
            Statement::Cache { table: "hot".into(), query: Some("SELECT k FROM t WHERE k > 1".into()) }
        );
        assert_eq!(
            classify("UNCACHE TABLE IF EXISTS t").unwrap(),
            Statement::Uncache { table: "t".into(), if_exists: true }
        );
        assert!(classify("CACHE LAZY TABLE t").is_err());
    }

    #[test]
    fn definitions_compare_by_meaning() {
        let plain = "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/d/t/'";
        assert!(same_definition(plain, "create or replace external table t stored as parquet location '/d/t/'"));
        assert!(!same_definition(plain, "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/d/u/'"));
        assert!(!same_definition(plain, "not sql"));
    }

    #[test]
    fn what_the_catalog_cannot_keep_is_refused_with_a_reason() {
        let e = classify("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION 'data/'").unwrap_err();
        assert!(e.to_string().contains("'data/' is relative"), "{e}");
        let e = classify("CREATE TABLE t AS SELECT 1").unwrap_err();
        assert!(e.to_string().contains("COPY ... TO"), "{e}");
        let e = classify("SELECT 1; SELECT 2").unwrap_err();
        assert!(e.to_string().contains("got 2"), "{e}");
        let e = classify("SELEC 1").unwrap_err();
        assert!(e.to_string().contains("SELEC"), "{e}");
    }
}
