//! Closed sets of values a user picks by name (`--format json`). The command
//! line lists and parses them through [`Choice`], so no library type depends
//! on the argument parser.

/// A value chosen by name from a fixed set.
pub trait Choice: Copy + Send + Sync + 'static {
    /// Every value, in the order help lists them.
    const ALL: &'static [Self];

    /// The name a user types.
    fn name(self) -> &'static str;

    /// What the value means, where its name does not say.
    fn help(self) -> Option<&'static str> {
        None
    }

    /// The value called `name`.
    fn named(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == name)
    }
}
