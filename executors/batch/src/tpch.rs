//! TPC-H data and queries for `cohort bench tpch` and the tests.
//!
//! Data comes from the `tpchgen` crates as Parquet, one directory per table
//! (`<dir>/<table>/<part>.parquet`). The 22 queries are vendored under
//! `tpch/` with the TPC fair-use notice; results derived from them are not
//! TPC-H results.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator, PartSuppGenerator,
    RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow, SupplierArrow,
};

use crate::{Error, Result};

/// The eight tables.
pub const TABLES: [&str; 8] = ["region", "nation", "customer", "supplier", "part", "partsupp", "orders", "lineitem"];

const QUERIES: [&str; 22] = [
    include_str!("../tpch/q1.sql"),
    include_str!("../tpch/q2.sql"),
    include_str!("../tpch/q3.sql"),
    include_str!("../tpch/q4.sql"),
    include_str!("../tpch/q5.sql"),
    include_str!("../tpch/q6.sql"),
    include_str!("../tpch/q7.sql"),
    include_str!("../tpch/q8.sql"),
    include_str!("../tpch/q9.sql"),
    include_str!("../tpch/q10.sql"),
    include_str!("../tpch/q11.sql"),
    include_str!("../tpch/q12.sql"),
    include_str!("../tpch/q13.sql"),
    include_str!("../tpch/q14.sql"),
    include_str!("../tpch/q15.sql"),
    include_str!("../tpch/q16.sql"),
    include_str!("../tpch/q17.sql"),
    include_str!("../tpch/q18.sql"),
    include_str!("../tpch/q19.sql"),
    include_str!("../tpch/q20.sql"),
    include_str!("../tpch/q21.sql"),
    include_str!("../tpch/q22.sql"),
];

/// The statements of query `n` (1 to 22), in order. Query 15 is three
/// (create a view, select, drop it); the others one.
pub fn query(n: usize) -> Result<Vec<String>> {
    let text =
        QUERIES.get(n.wrapping_sub(1)).ok_or_else(|| Error::Invalid(format!("TPC-H has queries 1 to 22, not {n}")))?;
    crate::split_statements(text)
}

/// `CREATE EXTERNAL TABLE` statements for data generated into `dir`.
pub fn table_ddl(dir: &Path) -> Vec<String> {
    TABLES
        .iter()
        .map(|t| format!("CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION '{}/{t}/'", dir.display()))
        .collect()
}

#[derive(Serialize, Deserialize, PartialEq)]
struct Generated {
    scale_factor: f64,
    parts: i32,
}

const MARKER: &str = "_cohort_tpch.json";

/// Writes TPC-H at `scale_factor` into `dir`, unless the same data is
/// already there. `progress(done, total)` is called as files complete.
/// Files are written on all cores.
pub fn generate(dir: &Path, scale_factor: f64, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<()> {
    if !(scale_factor > 0.0 && scale_factor <= 1000.0) {
        return Err(Error::Invalid(format!("scale factor must be in (0, 1000], got {scale_factor}")));
    }
    let parts = ((scale_factor * 4.0).ceil() as i32).clamp(1, 4000);
    let wanted = Generated { scale_factor, parts };
    let marker = dir.join(MARKER);
    if let Ok(text) = std::fs::read(&marker)
        && serde_json::from_slice::<Generated>(&text).is_ok_and(|g| g == wanted)
    {
        progress(1, 1);
        return Ok(());
    }
    let _ = std::fs::remove_file(&marker);
    let mut units: Vec<(&str, i32, i32)> = vec![("region", 1, 1), ("nation", 1, 1)];
    for table in &TABLES[2..] {
        units.extend((1..=parts).map(|p| (*table, p, parts)));
    }
    for table in TABLES {
        let d = dir.join(table);
        if d.exists() {
            std::fs::remove_dir_all(&d)
                .map_err(|source| Error::Io { context: format!("cannot clear {}", d.display()), source })?;
        }
        std::fs::create_dir_all(&d)
            .map_err(|source| Error::Io { context: format!("cannot create {}", d.display()), source })?;
    }
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(units.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(table, part, count)) = units.get(i) else { break };
                    if first_error.lock().expect("error slot").is_some() {
                        break;
                    }
                    let path = dir.join(table).join(format!("{part}.parquet"));
                    if let Err(e) = write_part(table, scale_factor, part, count, &path) {
                        first_error.lock().expect("error slot").get_or_insert(e);
                        break;
                    }
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, units.len());
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("error slot") {
        return Err(e);
    }
    std::fs::write(&marker, serde_json::to_vec(&wanted).expect("plain data"))
        .map_err(|source| Error::Io { context: format!("cannot write {}", marker.display()), source })?;
    Ok(())
}

fn write_part(table: &str, sf: f64, part: i32, count: i32, path: &Path) -> Result<()> {
    const BATCH: usize = 8192;
    match table {
        "region" => write(RegionArrow::new(RegionGenerator::new(sf, part, count)).with_batch_size(BATCH), path),
        "nation" => write(NationArrow::new(NationGenerator::new(sf, part, count)).with_batch_size(BATCH), path),
        "customer" => write(CustomerArrow::new(CustomerGenerator::new(sf, part, count)).with_batch_size(BATCH), path),
        "supplier" => write(SupplierArrow::new(SupplierGenerator::new(sf, part, count)).with_batch_size(BATCH), path),
        "part" => write(PartArrow::new(PartGenerator::new(sf, part, count)).with_batch_size(BATCH), path),
        "partsupp" => write(PartSuppArrow::new(PartSuppGenerator::new(sf, part, count)).with_batch_size(BATCH), path),
        "orders" => write(OrderArrow::new(OrderGenerator::new(sf, part, count)).with_batch_size(BATCH), path),
        "lineitem" => write(LineItemArrow::new(LineItemGenerator::new(sf, part, count)).with_batch_size(BATCH), path),
        other => Err(Error::Invalid(format!("unknown TPC-H table {other}"))),
    }
}

fn write<I>(batches: I, path: &Path) -> Result<()>
where
    I: arrow::record_batch::RecordBatchReader + Iterator<Item = Result<RecordBatch, ArrowError>>,
{
    let schema: SchemaRef = batches.schema();
    let io = |source| Error::Io { context: format!("cannot write {}", path.display()), source };
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("a valid level")))
        .build();
    let file = std::fs::File::create(path).map_err(io)?;
    let parquet = |e: parquet::errors::ParquetError| Error::DataFusion(e.into());
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(parquet)?;
    for batch in batches {
        writer.write(&batch.map_err(|e| Error::DataFusion(e.into()))?).map_err(parquet)?;
    }
    writer.close().map_err(parquet)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_is_there_and_q15_is_three_statements() {
        for n in 1..=22 {
            let statements = query(n).unwrap();
            assert_eq!(statements.len(), if n == 15 { 3 } else { 1 }, "q{n}");
        }
        assert!(query(23).is_err());
    }

    #[test]
    fn a_tiny_scale_factor_generates_every_table_once() {
        let dir = tempfile::tempdir().unwrap();
        let calls = AtomicUsize::new(0);
        generate(dir.path(), 0.001, &|_, _| {
            calls.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 8);
        for t in TABLES {
            assert!(dir.path().join(t).join("1.parquet").exists(), "{t}");
        }
        // Same data again: nothing is rewritten.
        generate(dir.path(), 0.001, &|d, t| assert_eq!((d, t), (1, 1))).unwrap();
    }
}
