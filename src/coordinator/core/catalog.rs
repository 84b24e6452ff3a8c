//! The SQL catalog as the coordinator keeps it: each table or view as the
//! statement that recreates it, in creation order (a view comes after what
//! it reads), and each cached table as its `CACHE TABLE`, stored with the
//! rest of the state.

use cohort_batch::{CacheDef, TableDef};

use super::Core;
use super::error::Result;

impl Core {
    /// Every table and view, in the order they were (re)created.
    pub fn tables(&self) -> Vec<TableDef> {
        self.tables.clone()
    }

    /// Adds a table or view, or replaces the one of the same name (which
    /// then counts as created now).
    pub fn put_table(&mut self, def: TableDef) -> Result<()> {
        self.turn(|core| {
            core.tables.retain(|t| !t.name.eq_ignore_ascii_case(&def.name));
            tracing::info!(table = %def.name, "catalog: table defined");
            core.tables.push(def);
            core.turn.catalog = true;
            Ok(())
        })
    }

    /// The cached tables, in the order they were cached.
    pub fn caches(&self) -> Vec<CacheDef> {
        self.caches.clone()
    }

    /// Records a `CACHE TABLE`, replacing an earlier one of the same name.
    pub fn put_cache(&mut self, def: CacheDef) -> Result<()> {
        self.turn(|core| {
            core.caches.retain(|c| !c.name.eq_ignore_ascii_case(&def.name));
            core.caches.push(def);
            core.turn.catalog = true;
            Ok(())
        })
    }

    /// Whether a `CACHE TABLE` of `name` is recorded.
    pub fn is_cached(&self, name: &str) -> bool {
        self.caches.iter().any(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// Forgets that a table is cached (`UNCACHE`, `DROP`, a replaced
    /// table); what was recorded, if anything.
    pub fn drop_cache(&mut self, name: &str) -> Result<Option<CacheDef>> {
        self.turn(|core| {
            let at = core.caches.iter().position(|c| c.name.eq_ignore_ascii_case(name));
            let dropped = at.map(|i| core.caches.remove(i));
            core.turn.catalog |= dropped.is_some();
            Ok(dropped)
        })
    }

    /// Forgets a table or view; whether there was one.
    pub fn drop_table(&mut self, name: &str) -> Result<bool> {
        self.turn(|core| {
            let before = core.tables.len();
            core.tables.retain(|t| !t.name.eq_ignore_ascii_case(name));
            let dropped = core.tables.len() != before;
            if dropped {
                tracing::info!(table = %name, "catalog: table dropped");
                core.turn.catalog = true;
            }
            Ok(dropped)
        })
    }
}
