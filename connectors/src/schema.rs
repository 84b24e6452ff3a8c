//! A pipeline's declared columns, in the order written.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::{Error, Result};

/// Builds the schema of `columns` (name, Arrow type name as DataFusion and
/// Arrow print them: `Int64`, `Utf8`, `Float64`, `Boolean`,
/// `Timestamp(Millisecond, None)`, ...). Every column is nullable: a
/// message without the key reads as null.
pub fn schema_of(columns: &[(String, String)]) -> Result<SchemaRef> {
    if columns.is_empty() {
        return Err(Error::Invalid("the schema declares no columns".into()));
    }
    let mut fields = Vec::with_capacity(columns.len());
    for (name, type_name) in columns {
        if fields.iter().any(|f: &Field| f.name() == name) {
            return Err(Error::Schema { column: name.clone(), message: "declared twice".into() });
        }
        let data_type: DataType = type_name.parse().map_err(|_| Error::Schema {
            column: name.clone(),
            message: format!(
                "unknown type `{type_name}` (use an Arrow type: Int64, Int32, Float64, Utf8, Boolean, \
                 Timestamp(Millisecond, None), Date32, ...)"
            ),
        })?;
        fields.push(Field::new(name, data_type, true));
    }
    Ok(Arc::new(Schema::new(fields)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn columns_keep_their_order_and_types() {
        let schema =
            schema_of(&cols(&[("user_id", "Int64"), ("url", "Utf8"), ("ts", "Timestamp(Millisecond, None)")])).unwrap();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["user_id", "url", "ts"]);
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
    }

    #[test]
    fn an_unknown_type_names_its_column() {
        let err = schema_of(&cols(&[("id", "Int64"), ("price", "Money")])).unwrap_err();
        assert!(matches!(&err, Error::Schema { column, .. } if column == "price"), "{err}");
        assert!(err.to_string().contains("unknown type `Money`"), "{err}");
    }
}
