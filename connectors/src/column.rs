//! What an existing replica column can hold: the check that turns a contract's type change
//! into one named setup error, rather than every later record failing in the store.
//!
//! It applies to tables walcast shapes (`auto_create` or `auto_add_columns`): each table
//! store reads its columns' declared types into a [`ColumnKind`], and a kept field whose
//! column cannot hold every value of its type (a `string` field over an `integer` column, a
//! `long` over an `integer`, a decimal with more places than the column keeps) stops the
//! sink naming the table, column, both types and the fix. walcast never changes a column's
//! type itself. Types it does not know (enums, domains, user types) are taken on trust. In
//! a table the operator shapes by hand, the columns' types are the operator's choice (a
//! string field may well feed an integer column): the store's own cast decides, value by
//! value, and a value it refuses is a poison record.
//!
//! The check is on types, not on ranges: a column whose range is narrower than its type's
//! (MySQL's unsigned integers, its `TIMESTAMP` of 1970–2038) is taken as its type, and the
//! store refuses a value outside, one by one, as a poison record naming the column (the
//! MySQL sink's sessions are strict, so such a value is never clamped).

use crate::sink::{Field, FieldType};
use crate::table::TableSettings;
use crate::Error;

/// What a replica column holds, as far as its declared type tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnKind {
    /// A boolean column.
    Bool,
    /// An integer column of this many bits.
    Int(u8),
    /// An exact decimal column: digits before and after the point, each `None` when the
    /// column keeps as many as the store allows (PostgreSQL's bare `numeric`, MySQL's 65
    /// digits or 30 places), so a wider field's values fit or not one by one.
    Decimal {
        /// Digits before the point.
        whole: Option<usize>,
        /// Digits after the point.
        scale: Option<usize>,
    },
    /// A floating-point column of this many bits.
    Float(u8),
    /// A character column.
    Text,
    /// A binary column.
    Bytes,
    /// A date column.
    Date,
    /// A time-of-day column.
    Time,
    /// A timestamp of an instant (with time zone).
    Timestamp,
    /// A timestamp without time zone.
    LocalTimestamp,
    /// A UUID column.
    Uuid,
    /// A JSON column.
    Json,
    /// An array column of this element kind.
    Array(Box<ColumnKind>),
    /// A type walcast does not know (an enum, a domain): the store decides per value.
    Other,
}

impl ColumnKind {
    /// Whether every value of a field of type `ty` fits this column.
    pub fn holds(&self, ty: &FieldType) -> bool {
        use ColumnKind as C;
        use FieldType as F;
        match (self, ty) {
            (C::Other, _) => true,
            (C::Text, F::Bytes) => false,
            // Every other value has a text form.
            (C::Text, _) => true,
            (C::Bool, F::Bool) => true,
            (C::Int(bits), F::Int) => *bits >= 32,
            (C::Int(bits), F::Long) => *bits >= 64,
            (C::Decimal { whole, scale }, ty) => {
                let (need_whole, need_scale) = match ty {
                    F::Int => (10, 0),
                    F::Long => (19, 0),
                    F::Decimal { precision, scale } => (precision.saturating_sub(*scale), *scale),
                    _ => return false,
                };
                whole.is_none_or(|w| w >= need_whole) && scale.is_none_or(|s| s >= need_scale)
            }
            (C::Float(bits), F::Float) => *bits >= 32,
            (C::Float(bits), F::Double | F::Int) => *bits >= 64,
            (C::Bytes, F::Bytes) => true,
            (C::Date, F::Date) => true,
            (C::Time, F::Time) => true,
            (C::Timestamp | C::LocalTimestamp, F::Date | F::Timestamp | F::LocalTimestamp) => true,
            (C::Uuid, F::Uuid) => true,
            // A string may well hold a UUID, JSON, a date or a time: the column reads it.
            (C::Uuid | C::Json | C::Date | C::Time | C::Timestamp | C::LocalTimestamp, F::Text) => {
                true
            }
            (C::Json, F::Json | F::Array(_)) => true,
            (C::Array(item), F::Array(field_item)) => item.holds(field_item),
            _ => false,
        }
    }
}

/// In a table walcast shapes, checks every kept field of `fields` that already has a
/// column: `kind_of` gives the column's kind and its type as declared, `None` for a column
/// that does not exist (yet). `alter` spells the statement that changes a column's type,
/// for the hint.
pub fn check_types(
    settings: &TableSettings,
    fields: &[Field],
    kind_of: impl Fn(&str) -> Option<(ColumnKind, String)>,
    alter: impl Fn(&str, &FieldType) -> String,
) -> Result<(), Error> {
    if !settings.auto_create && !settings.auto_add_columns {
        return Ok(());
    }
    for field in fields.iter().filter(|f| settings.kept(&f.name)) {
        let column = settings.column_of(&field.name);
        let Some((kind, declared)) = kind_of(&column) else {
            continue;
        };
        if !kind.holds(&field.ty) {
            return Err(Error::Setup(format!(
                "replica table {}: column {column} is {declared}, which cannot hold field {} ({}) of the topic's contracts (a contract changed the field's type, or the column was made for another); walcast never changes a column's type: run {}, or keep the field in a new column (columns = {{ new_column = \"{}\" }}), then restart",
                settings.table,
                field.name,
                field.ty.name(),
                alter(&column, &field.ty),
                field.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ColumnKind as C;
    use crate::sink::FieldType as F;

    #[test]
    fn a_column_holds_its_own_type_and_wider_ones_only() {
        assert!(C::Int(64).holds(&F::Long));
        assert!(C::Int(64).holds(&F::Int));
        assert!(!C::Int(32).holds(&F::Long), "int → long needs a bigint");
        assert!(!C::Int(32).holds(&F::Text), "a string over an integer");
        assert!(C::Text.holds(&F::Long) && C::Text.holds(&F::Json));
        assert!(!C::Text.holds(&F::Bytes));
        assert!(
            C::Other.holds(&F::Text),
            "enums and domains are the store's to judge"
        );
        let money = |precision, scale| F::Decimal { precision, scale };
        let numeric = |whole, scale| C::Decimal { whole, scale };
        assert!(numeric(Some(10), Some(2)).holds(&money(10, 2)));
        assert!(
            !numeric(Some(10), Some(2)).holds(&money(10, 4)),
            "places lost"
        );
        assert!(
            !numeric(Some(4), Some(2)).holds(&money(10, 2)),
            "digits lost"
        );
        assert!(numeric(None, None).holds(&money(40, 10)));
        assert!(
            !numeric(None, Some(2)).holds(&money(10, 4)),
            "MySQL's DECIMAL(65, 2) keeps any number of digits but 2 places"
        );
        assert!(numeric(None, Some(2)).holds(&money(80, 2)));
        assert!(
            numeric(Some(19), Some(0)).holds(&F::Long) && !numeric(Some(18), None).holds(&F::Long)
        );
        assert!(C::Array(Box::new(C::Text)).holds(&F::Array(Box::new(F::Text))));
        assert!(!C::Array(Box::new(C::Int(32))).holds(&F::Array(Box::new(F::Text))));
        assert!(C::Json.holds(&F::Array(Box::new(F::Long))));
        assert!(C::Timestamp.holds(&F::Timestamp) && !C::Date.holds(&F::Timestamp));
        assert!(
            C::Uuid.holds(&F::Text) && C::Json.holds(&F::Text),
            "text forms they read"
        );
    }
}
