//! One error type for the whole library. Every variant says what went wrong and where
//! (file, record or line); the message should also tell the user what to do.

use std::path::{Path, PathBuf};

#[derive(thiserror::Error)]
pub enum Error {
    /// Bad content in a data file: `path`, then the location (record/line) and reason in `msg`.
    #[error("{}: {msg}", path.display())]
    Data { path: PathBuf, msg: String },

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The user asked for something that does not exist or is not allowed (unknown dataset,
    /// teacher, level, option, or a path outside the output dir).
    #[error("{0}")]
    Usage(String),

    /// Errors from polars, with what cotlab was doing at the time.
    #[error("{context}: {source}")]
    Frame {
        context: String,
        #[source]
        source: polars::error::PolarsError,
    },

    /// A Rhai script failed: already formatted as `file:line:col: reason`.
    #[error("{0}")]
    Script(String),

    /// A tensor or model operation failed (candle, the tokenizer): what cotlab was doing, then
    /// the library's own message, which names the op and the shapes involved. Not the user's
    /// fault as a rule: the message says what was attempted so a bug report can be precise.
    #[error("{context}: {msg}")]
    Model { context: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

// Debug shows the message: `?` in a notebook cell or `main` prints errors with `{:?}`.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Error {
    pub fn data(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Data { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }
}

/// Attach context to polars results: `df.lazy().collect().frame_ctx("group_by")?`.
pub trait FrameContext<T> {
    fn frame_ctx(self, context: impl Into<String>) -> Result<T>;
}

impl<T> FrameContext<T> for std::result::Result<T, polars::error::PolarsError> {
    fn frame_ctx(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Frame { context: context.into(), source })
    }
}

/// Attach context to candle and tokenizer results: `x.matmul(&w)?`-style code returns
/// `candle_core::Result`; `.model_ctx("layer 3 attention")` turns it into `Error::Model`.
pub trait ModelContext<T> {
    fn model_ctx(self, context: impl Into<String>) -> Result<T>;
}

/// candle's message without the backtrace it captures under `RUST_BACKTRACE` (users get the
/// operation and shapes; a developer can still set `COTLAB_BACKTRACE=1` to keep it).
pub fn candle_message(e: &candle_core::Error) -> String {
    let keep_bt = std::env::var_os("COTLAB_BACKTRACE").is_some_and(|v| v == "1");
    match e {
        candle_core::Error::WithBacktrace { inner, .. } if !keep_bt => candle_message(inner),
        candle_core::Error::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        other => other.to_string(),
    }
}

impl<T> ModelContext<T> for std::result::Result<T, candle_core::Error> {
    fn model_ctx(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Model { context: context.into(), msg: candle_message(&e) })
    }
}

impl<T> ModelContext<T> for std::result::Result<T, tokenizers::Error> {
    fn model_ctx(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Model { context: context.into(), msg: e.to_string() })
    }
}

/// Parse an option whose value is one of a fixed set, for `#[serde(try_from = "String")]` enums:
/// the error names the option and lists the choices, e.g. "schedule: unknown value 'cosin':
/// expected one of cosine, linear, constant".
pub fn one_of<T: Copy>(option: &str, value: &str, choices: &[(&str, T)]) -> std::result::Result<T, String> {
    choices.iter().find(|(name, _)| *name == value).map(|(_, v)| *v).ok_or_else(|| {
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        format!("{option}: unknown value '{value}': expected one of {}", names.join(", "))
    })
}

/// A string enum whose names are written once: `choices! { enum Schedule("schedule") { Cosine =
/// "cosine", Linear = "linear" } }` defines the enum (Clone, Copy, Debug, PartialEq, Eq, Hash;
/// more derives and docs go before `enum`, `#[default]` on a variant), `ALL`, `parse` (through
/// [`one_of`]: the error names the option and lists the choices), `name`, `Display`, and serde as
/// the name (`TryFrom<String>`, so a wrong value's error is `parse`'s). Other spellings a user may
/// type follow the name: `Sym = "sym" | "symbolic"`; with any, `parse` also reads the input
/// lowercased with `_` and spaces as `-`.
#[macro_export]
macro_rules! choices {
    ($(#[$meta:meta])* $vis:vis enum $name:ident ($option:literal) { $($(#[$vmeta:meta])* $variant:ident = $text:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Other spellings of the names (see the macro).
            const ALIASES: &'static [(&'static str, $name)] = &[$($(($alias, $name::$variant),)*)+];

            /// One of the names (or, where the enum has aliases, a spelling of one); anything
            /// else is an error naming the option and every choice.
            pub fn parse(s: &str) -> std::result::Result<$name, String> {
                let names = [$(($text, $name::$variant)),+];
                if !Self::ALIASES.is_empty() {
                    let norm = |t: &str| t.to_ascii_lowercase().replace(['_', ' '], "-");
                    let n = norm(s);
                    if let Some((_, v)) = names.iter().chain(Self::ALIASES).find(|(t, _)| norm(t) == n) {
                        return Ok(*v);
                    }
                }
                $crate::error::one_of($option, s, &names)
            }

            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> std::result::Result<Self, String> {
                $name::parse(&s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                $name::parse(&s).map_err(<D::Error as serde::de::Error>::custom)
            }
        }
    };
}

/// Check a numeric option against its allowed range, NaN included: every option a user types
/// goes through this before it can overflow an allocation or a `Duration`.
/// `in_range("sft", "epochs", 1e300, 0.0..=1000.0)` → "sft: 'epochs' must be in 0..=1000, got 1e300".
pub fn in_range<T: PartialOrd + std::fmt::Display + Copy>(what: &str, option: &str, value: T, range: std::ops::RangeInclusive<T>) -> Result<T> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(Error::Usage(format!("{what}: '{option}' must be in {}..={}, got {value}", range.start(), range.end())))
    }
}

/// Build a `Error::Usage` with format arguments: `usage!("unknown teacher '{t}'")`.
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => { $crate::error::Error::Usage(format!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    crate::choices! {
        /// A test enum.
        #[derive(Default)]
        enum Speed("speed") {
            #[default]
            Slow = "slow",
            VeryFast = "very_fast",
        }
    }

    #[test]
    fn choices_map_names_both_ways_and_list_them_on_error() {
        for &v in Speed::ALL {
            assert_eq!(Speed::parse(v.name()), Ok(v));
            assert_eq!(serde_json::to_value(v).unwrap(), v.name());
            assert_eq!(serde_json::from_value::<Speed>(v.name().into()).unwrap(), v);
        }
        assert_eq!((Speed::default(), Speed::VeryFast.to_string()), (Speed::Slow, "very_fast".to_string()));
        let e = serde_json::from_value::<Speed>("fast".into()).unwrap_err().to_string();
        assert_eq!(e, "speed: unknown value 'fast': expected one of slow, very_fast");
        assert!(serde_json::from_value::<Speed>(3.into()).is_err(), "not a string");
        // Without aliases, only the names themselves.
        assert!(Speed::parse("Slow").is_err());
    }

    crate::choices! {
        enum Shape("shape") {
            Round = "round" | "circle" | "disc",
            Flat = "flat-top",
        }
    }

    #[test]
    fn aliases_and_loose_spellings_parse_to_their_variant() {
        for s in ["round", "circle", "Disc", "flat-top", "FLAT_TOP", "flat top"] {
            assert!(Shape::parse(s).is_ok(), "{s}");
        }
        assert_eq!(Shape::parse("circle"), Ok(Shape::Round));
        assert_eq!(Shape::Round.name(), "round", "the name is the first spelling");
        assert_eq!(Shape::ALL, &[Shape::Round, Shape::Flat][..]);
        assert_eq!(Shape::parse("square").unwrap_err(), "shape: unknown value 'square': expected one of round, flat-top");
    }
}
