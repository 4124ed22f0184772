//! Host glue.
