//! The catalog metadata JDBC and ODBC tools ask for beyond tables: the
//! SQL types the engine takes (`DatabaseMetaData.getTypeInfo`), primary
//! keys (`getPrimaryKeys`: a keyed live table's key) and foreign keys
//! (`getImportedKeys`, `getExportedKeys`, `getCrossReference`: Cohort has
//! none, so those answer with no rows rather than an error, which tools
//! such as DBeaver would show on every table they open).

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::sql::metadata::{XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder};
use arrow_flight::sql::{Nullable, Searchable, XdbcDataType, XdbcDatetimeSubcode};
use cohort_batch::live::LiveTable;
use datafusion::prelude::SessionContext;

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
