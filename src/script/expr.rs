//! The script value of a polars expression, in its own file because both the frame bindings (which
//! build expressions) and the results bindings (which take them, as `vs_baseline`'s baseline)
//! name it, and those two must not import each other.

use polars::prelude::Expr;

/// A polars expression as a Rhai value.
#[derive(Clone)]
pub struct ExprW(pub Expr);
