//! Keel init
