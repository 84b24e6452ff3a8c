//! The catalog metadata JDBC and ODBC tools ask for beyond tables: what
//! the server's SQL supports (`GetSqlInfo`), the SQL types the engine takes (`DatabaseMetaData.getTypeInfo`), primary
//! keys (`getPrimaryKeys`: a keyed live table's key) and foreign keys
//! (`getImportedKeys`, `getExportedKeys`, `getCrossReference`: Cohort has
//! none, so those answer with no rows rather than an error, which tools
//! such as DBeaver would show on every table they open).

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlOuterJoinsSupportLevel, SqlSupportedCaseSensitivity,
    SqlSupportedGroupBy, SqlSupportedResultSetConcurrency, SqlSupportedResultSetType, SqlSupportedSubqueries,
    SqlSupportedUnions, SqlTransactionIsolationLevel, SupportedSqlGrammar, XdbcDataType, XdbcDatetimeSubcode,
};
use cohort_batch::live::LiveTable;
use datafusion::prelude::SessionContext;

/// What the server is and what its SQL does, as `DatabaseMetaData` asks
/// it: JDBC drivers before 2026 fail with a NullPointerException on an
/// item a server leaves out (DBeaver asks for the keywords as it connects).
pub static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Cohort");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    // No timeouts: a query runs until it ends or its client cancels.
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    // The dialect: DataFusion's.
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, true);
    b.append(SqlInfo::SqlIdentifierCase, SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlQuotedIdentifierCase, SqlSupportedCaseSensitivity::SqlCaseSensitivityUnknown as i32);
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    b.append(SqlInfo::SqlNullOrdering, SqlNullOrdering::SqlNullsSortedHigh as i32);
    b.append(SqlInfo::SqlKeywords, datafusion::sql::sqlparser::keywords::ALL_KEYWORDS);
    b.append(SqlInfo::SqlNumericFunctions, NUMERIC_FUNCTIONS);
    b.append(SqlInfo::SqlStringFunctions, STRING_FUNCTIONS);
    b.append(SqlInfo::SqlSystemFunctions, SYSTEM_FUNCTIONS);
    b.append(SqlInfo::SqlDatetimeFunctions, DATETIME_FUNCTIONS);
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlSupportsConvert, BTreeMap::<i32, Vec<i32>>::new());
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(
        SqlInfo::SqlSupportedGroupBy,
        bits(&[SqlSupportedGroupBy::SqlGroupByUnrelated as i32, SqlSupportedGroupBy::SqlGroupByBeyondSelect as i32]),
    );
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(
        SqlInfo::SqlSupportedGrammar,
        bits(&[SupportedSqlGrammar::SqlMinimumGrammar as i32, SupportedSqlGrammar::SqlCoreGrammar as i32]),
    );
    // SupportedAnsi92SqlGrammarLevel (not exported by arrow-flight): entry (0) and intermediate (1).
    b.append(SqlInfo::SqlAnsi92SupportedLevel, bits(&[0, 1]));
    b.append(SqlInfo::SqlSupportsIntegrityEnhancementFacility, false);
    b.append(SqlInfo::SqlOuterJoinsSupportLevel, SqlOuterJoinsSupportLevel::SqlFullOuterJoins as i32);
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlProcedureTerm, "procedure");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSchemasSupportedActions, 0i32);
    b.append(SqlInfo::SqlCatalogsSupportedActions, 0i32);
    b.append(SqlInfo::SqlSupportedPositionedCommands, 0i32);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(
        SqlInfo::SqlSupportedSubqueries,
        bits(&[
            SqlSupportedSubqueries::SqlSubqueriesInComparisons as i32,
            SqlSupportedSubqueries::SqlSubqueriesInExists as i32,
            SqlSupportedSubqueries::SqlSubqueriesInIns as i32,
        ]),
    );
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(
        SqlInfo::SqlSupportedUnions,
        bits(&[SqlSupportedUnions::SqlUnion as i32, SqlSupportedUnions::SqlUnionAll as i32]),
    );
    // No limits but memory: JDBC reads 0 as none or unknown.
    for limit in [
        SqlInfo::SqlMaxBinaryLiteralLength,
        SqlInfo::SqlMaxCharLiteralLength,
        SqlInfo::SqlMaxColumnNameLength,
        SqlInfo::SqlMaxColumnsInGroupBy,
        SqlInfo::SqlMaxColumnsInIndex,
        SqlInfo::SqlMaxColumnsInOrderBy,
        SqlInfo::SqlMaxColumnsInSelect,
        SqlInfo::SqlMaxColumnsInTable,
        SqlInfo::SqlMaxConnections,
        SqlInfo::SqlMaxCursorNameLength,
        SqlInfo::SqlMaxIndexLength,
        SqlInfo::SqlDbSchemaNameLength,
        SqlInfo::SqlMaxProcedureNameLength,
        SqlInfo::SqlMaxCatalogNameLength,
        SqlInfo::SqlMaxRowSize,
        SqlInfo::SqlMaxStatementLength,
        SqlInfo::SqlMaxStatements,
        SqlInfo::SqlMaxTableNameLength,
        SqlInfo::SqlMaxTablesInSelect,
        SqlInfo::SqlMaxUsernameLength,
    ] {
        b.append(limit, 0i64);
    }
    b.append(SqlInfo::SqlMaxRowSizeIncludesBlobs, false);
    // No transactions: each statement commits alone.
    b.append(SqlInfo::SqlDefaultTransactionIsolation, SqlTransactionIsolationLevel::SqlTransactionNone as i32);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlSupportedTransactionsIsolationLevels, 0i32);
    b.append(SqlInfo::SqlDataDefinitionCausesTransactionCommit, false);
    b.append(SqlInfo::SqlDataDefinitionsInTransactionsIgnored, false);
    // Results stream once, forward, read-only.
    b.append(
        SqlInfo::SqlSupportedResultSetTypes,
        bits(&[SqlSupportedResultSetType::SqlResultSetTypeForwardOnly as i32]),
    );
    let read_only = bits(&[SqlSupportedResultSetConcurrency::SqlResultSetConcurrencyReadOnly as i32]);
    b.append(SqlInfo::SqlSupportedConcurrenciesForResultSetUnspecified, 0i32);
    b.append(SqlInfo::SqlSupportedConcurrenciesForResultSetForwardOnly, read_only);
    b.append(SqlInfo::SqlSupportedConcurrenciesForResultSetScrollSensitive, 0i32);
    b.append(SqlInfo::SqlSupportedConcurrenciesForResultSetScrollInsensitive, 0i32);
    b.append(SqlInfo::SqlBatchUpdatesSupported, true);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlNamedParametersSupported, false);
    b.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    b.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    b.build().expect("valid SQL info")
});

/// A set of protocol enum values as the bitmask SqlInfo carries.
fn bits(values: &[i32]) -> i32 {
    values.iter().fold(0, |mask, v| mask | (1 << v))
}

const NUMERIC_FUNCTIONS: &[&str] = &[
    "abs", "acos", "asin", "atan", "atan2", "cbrt", "ceil", "cos", "cot", "degrees", "exp", "floor", "gcd", "lcm",
    "ln", "log", "log10", "log2", "pi", "power", "radians", "random", "round", "signum", "sin", "sqrt", "tan", "trunc",
];
const STRING_FUNCTIONS: &[&str] = &[
    "ascii",
    "btrim",
    "char_length",
    "chr",
    "concat",
    "concat_ws",
    "initcap",
    "left",
    "length",
    "lower",
    "lpad",
    "ltrim",
    "md5",
    "octet_length",
    "repeat",
    "replace",
    "reverse",
    "right",
    "rpad",
    "rtrim",
    "split_part",
    "starts_with",
    "strpos",
    "substr",
    "translate",
    "upper",
];
const SYSTEM_FUNCTIONS: &[&str] = &["arrow_typeof", "coalesce", "nullif", "version"];
const DATETIME_FUNCTIONS: &[&str] = &[
    "current_date",
    "current_time",
    "date_bin",
    "date_part",
    "date_trunc",
    "from_unixtime",
    "make_date",
    "now",
    "to_char",
    "to_date",
    "to_timestamp",
];

/// The SQL types DataFusion takes in `CREATE TABLE` and `CAST`, as
/// `getTypeInfo` lists them.
pub static XDBC_TYPES: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
    let mut builder = XdbcTypeInfoDataBuilder::new();
    let number = |name: &str, data_type: XdbcDataType, digits: i32| XdbcTypeInfo {
        type_name: name.into(),
        data_type,
        column_size: Some(digits),
        nullable: Nullable::NullabilityNullable,
        searchable: Searchable::Full,
        unsigned_attribute: Some(false),
        auto_increment: Some(false),
        local_type_name: Some(name.into()),
        sql_data_type: data_type,
        num_prec_radix: Some(10),
        ..XdbcTypeInfo::default()
    };
    let quoted = |name: &str, data_type: XdbcDataType, prefix: &str, size: Option<i32>| XdbcTypeInfo {
        type_name: name.into(),
        data_type,
        column_size: size,
        literal_prefix: Some(prefix.into()),
        literal_suffix: Some("'".into()),
        nullable: Nullable::NullabilityNullable,
        case_sensitive: true,
        searchable: Searchable::Full,
        local_type_name: Some(name.into()),
        sql_data_type: data_type,
        ..XdbcTypeInfo::default()
    };
    // ODBC files dates and times under one SQL type with a subcode
    // (SQL_CODE_DATE is 1, which the protocol names `YEAR` first).
    let datetime = |info: XdbcTypeInfo, subcode: XdbcDatetimeSubcode| XdbcTypeInfo {
        sql_data_type: XdbcDataType::XdbcDatetime,
        datetime_subcode: Some(subcode),
        case_sensitive: false,
        ..info
    };
    for info in [
        XdbcTypeInfo { num_prec_radix: None, unsigned_attribute: None, ..number("BOOLEAN", XdbcDataType::XdbcBit, 1) },
        number("TINYINT", XdbcDataType::XdbcTinyint, 3),
        number("SMALLINT", XdbcDataType::XdbcSmallint, 5),
        number("INTEGER", XdbcDataType::XdbcInteger, 10),
        number("BIGINT", XdbcDataType::XdbcBigint, 19),
        number("REAL", XdbcDataType::XdbcReal, 7),
        number("DOUBLE", XdbcDataType::XdbcDouble, 15),
        XdbcTypeInfo {
            create_params: Some(vec!["precision".into(), "scale".into()]),
            fixed_prec_scale: true,
            minimum_scale: Some(0),
            maximum_scale: Some(38),
            ..number("DECIMAL", XdbcDataType::XdbcDecimal, 38)
        },
        quoted("VARCHAR", XdbcDataType::XdbcVarchar, "'", None),
        datetime(quoted("DATE", XdbcDataType::XdbcDate, "DATE '", Some(10)), XdbcDatetimeSubcode::XdbcSubcodeYear),
        datetime(quoted("TIME", XdbcDataType::XdbcTime, "TIME '", Some(15)), XdbcDatetimeSubcode::XdbcSubcodeTime),
        datetime(
            quoted("TIMESTAMP", XdbcDataType::XdbcTimestamp, "TIMESTAMP '", Some(26)),
            XdbcDatetimeSubcode::XdbcSubcodeTimestamp,
        ),
        XdbcTypeInfo { case_sensitive: false, ..quoted("BYTEA", XdbcDataType::XdbcVarbinary, "X'", None) },
    ] {
        builder.append(info);
    }
    builder.build().expect("the type table is well formed")
});

/// `CommandGetPrimaryKeys`' columns.
pub fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// The columns of `CommandGetImportedKeys`, `CommandGetExportedKeys` and
/// `CommandGetCrossReference` alike.
pub fn foreign_keys_schema() -> SchemaRef {
    let name = |n: &str, nullable: bool| Field::new(n, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        name("pk_catalog_name", true),
        name("pk_db_schema_name", true),
        name("pk_table_name", false),
        name("pk_column_name", false),
        name("fk_catalog_name", true),
        name("fk_db_schema_name", true),
        name("fk_table_name", false),
        name("fk_column_name", false),
        Field::new("key_sequence", DataType::Int32, false),
        name("fk_key_name", true),
        name("pk_key_name", true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

/// The primary key of `table` (narrowed to a catalog and schema where
/// given): a keyed live table's key columns, in order; other tables have
/// none.
pub async fn primary_keys(
    ctx: &SessionContext,
    catalog: Option<&str>,
    db_schema: Option<&str>,
    table: &str,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut rows: Vec<(String, String, String, i32)> = Vec::new();
    for catalog_name in ctx.catalog_names().into_iter().filter(|c| catalog.is_none_or(|want| want == c)) {
        let Some(found) = ctx.catalog(&catalog_name) else { continue };
        for schema_name in found.schema_names().into_iter().filter(|s| db_schema.is_none_or(|want| want == s)) {
            let Some(schema) = found.schema(&schema_name) else { continue };
            let Ok(Some(provider)) = schema.table(table).await else { continue };
            let Some(live) = provider.downcast_ref::<LiveTable>() else { continue };
            for (at, column) in live.0.key.iter().flat_map(|key| key.columns.iter()).enumerate() {
                rows.push((catalog_name.clone(), schema_name.clone(), column.clone(), at as i32 + 1));
            }
        }
    }
    let text = |values: Vec<String>| Arc::new(StringArray::from(values)) as ArrayRef;
    RecordBatch::try_new(
        primary_keys_schema(),
        vec![
            text(rows.iter().map(|r| r.0.clone()).collect()),
            text(rows.iter().map(|r| r.1.clone()).collect()),
            text(vec![table.to_string(); rows.len()]),
            text(rows.iter().map(|r| r.2.clone()).collect()),
            text(vec![format!("{table}_pkey"); rows.len()]),
            Arc::new(Int32Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_jdbc_asks_for_is_answered() {
        // The server's items and the SQL's (500..=576), which JDBC's
        // DatabaseMetaData reads; Substrait's versions (6, 7) only matter
        // to a server that takes Substrait plans
        let server = (0..=11).chain(100..=101).filter(|i| ![6, 7].contains(i));
        let wanted: Vec<u32> = server.chain(500..=576).filter(|i| SqlInfo::try_from(*i as i32).is_ok()).collect();
        let batch = SQL_INFO.record_batch(wanted.iter().copied()).unwrap();
        let ids = batch.column(0).as_any().downcast_ref::<arrow::array::UInt32Array>().unwrap();
        let answered: Vec<u32> = ids.values().to_vec();
        let missing: Vec<_> = wanted.iter().filter(|i| !answered.contains(i)).collect();
        assert!(missing.is_empty(), "unanswered SqlInfo items: {missing:?}");
    }

    #[test]
    fn the_functions_advertised_are_datafusions() {
        use datafusion::execution::FunctionRegistry;
        let ctx = SessionContext::new();
        for name in [NUMERIC_FUNCTIONS, STRING_FUNCTIONS, SYSTEM_FUNCTIONS, DATETIME_FUNCTIONS].concat() {
            assert!(ctx.udf(name).is_ok(), "`{name}` is not a DataFusion function");
        }
    }
}
