//! Class hours and usage-hour quotas, below the web layer and the VM operations that carry them out.
//!
//! - [`timetable`]: a class's weekly slots and one-off sessions in its IANA time zone (daylight
//!   saving time by the time zone database, through `jiff`), checked field by field.
//! - [`wheel`]: one timer wheel for every class's next actions (warm-up, warnings, shutdown, stop)
//!   with a persisted [`wheel::Mark`] per class, so a restart neither misses nor repeats an action.
//! - [`quota`]: running time outside class time from power transitions, never counted twice.
//!
//! Nothing here performs an action, reads a clock or stores a record: times are Unix seconds handed
//! in, so tests control them; the runner does the actions through `ops` and persists marks and usage.

pub mod error;
pub mod quota;
pub mod timetable;
pub mod wheel;

pub use error::FieldError;
pub use quota::{Quota, Usage, duration_text, runs_out_at};
pub use timetable::{Compiled, Day, Interval, OneOffSlot, Outside, Timetable, WeeklySlot};
pub use wheel::{Action, Due, Mark, Wheel};
