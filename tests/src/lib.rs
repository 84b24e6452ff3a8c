//! End-to-end tests of Cohort's processes.
